"""Shared pytest set-up: every test runs with the `ci` profile unless it says otherwise."""

import os

os.environ.setdefault("FTLAB_PROFILE", "ci")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Unit tests choose their own sizes; a profile override left in the shell (the Makefile's gpu-on-cpu
# notebook pass sets one) must not change them.
os.environ.pop("FTLAB_PROFILE_OVERRIDES", None)
