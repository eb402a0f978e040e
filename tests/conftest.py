"""Shared pytest set-up: every test runs with the `ci` profile unless it says otherwise."""

import os

os.environ.setdefault("FTLAB_PROFILE", "ci")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
