"""Generated from proto/ by tools/gen_protos.py: do not edit."""
