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


# Unbraced content: no "$", line end or backslash-box marker inside.
unbraced = st.text(st.characters(blacklist_characters="{}\\#$\n"), max_size=40)


@given(before=plain_text, content=unbraced.filter(lambda c: c.strip()), closing=st.sampled_from(["$", "$.", "\n", ""]),
       after=plain_text)
def test_an_unbraced_box_reads_up_to_the_dollar_or_the_line_end(before, content, closing, after):
  text = f"{before}\\boxed {content}{closing}{after if closing else ''}"
  assert answers.last_boxed(text, max_chars=10_000) == content.strip()


def test_unbraced_boxes_as_math_solutions_write_them():
  assert answers.last_boxed("so the answer is $\\boxed 5$.") == "5"
  assert answers.last_boxed("Thus $x = \\boxed 12$") == "12"
  assert answers.last_boxed("\\fbox  -3/4\nmore text") == "-3/4"
  assert answers.extract_answer("The total is $\\boxed 7$ apples, not 9") == "7"
  assert answers.last_boxed("$\\boxed $") is None  # empty
  assert answers.last_boxed("\\boxedfoo 5") is None  # another command
  assert answers.last_boxed("\\boxed " + "9" * 20, max_chars=10) is None  # over max_chars
