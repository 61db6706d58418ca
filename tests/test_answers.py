"""Answer extraction: the last \\boxed{}, GSM8K's "####", the final number, and hostile texts."""
from hypothesis import given, strategies as st

from asympo_jax.data import answers

# Brace-free text without the markers extraction looks for.
plain_text = st.text(st.characters(blacklist_characters="{}\\#"), max_size=40)


@st.composite
def balanced(draw, depth=3):
  """LaTeX-ish content whose braces balance."""
  parts = draw(st.lists(plain_text if depth == 0 else st.one_of(plain_text, balanced(depth=depth - 1).map(
      lambda s: "{" + s + "}")), max_size=4))
  return "".join(parts)


@given(before=plain_text, content=balanced(), after=plain_text)
def test_last_boxed_returns_the_balanced_content(before, content, after):
  text = f"{before}\\boxed{{{content}}}{after}"
  assert answers.last_boxed(text, max_chars=10_000) == content.strip()


@given(first=balanced(), last=balanced())
def test_the_last_box_wins(first, last):
  text = f"so \\boxed{{{first}}} and then \\fbox{{{last}}}."
  assert answers.extract_answer(text, max_chars=10_000) == last.strip()


def test_a_cut_off_box_is_no_answer_even_with_numbers_around():
  assert answers.extract_answer("We get 12, so \\boxed{12") is None
  assert answers.extract_answer("\\boxed{" + "{" * 5000 + "7" + "}" * 5000 + "}") is None  # over max_chars


def test_gsm8k_line_and_final_number():
  assert answers.extract_answer("She pays 3*2=6.\n#### 1,200\n") == "1,200"
  assert answers.gsm8k_gold("so\n#### 1,450,000") == "1450000"
  assert answers.extract_answer("It costs 3 dollars, then 4.5 more") == "4.5"
  assert answers.extract_answer("the answer is -12,345 apples") == "-12,345"
  assert answers.extract_answer("no digits here") is None


@given(number=st.integers(-10**9, 10**9), filler=plain_text)
def test_final_number_finds_the_last_integer(number, filler):
  filler = "".join(c for c in filler if not c.isdigit() and c not in "-.,")
  assert answers.final_number(f"7 {filler} {number}") == str(number)
