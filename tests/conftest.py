"""Test configuration shared by every test module."""

import os
import sys

# tests/ holds helpers (harness.py) imported by the test modules.
sys.path.insert(0, os.path.dirname(__file__))
