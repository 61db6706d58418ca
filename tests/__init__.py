"""The test suite; its helper modules (tiny_checkpoints, train_fixtures, trainer_runner) import as tests.*."""
