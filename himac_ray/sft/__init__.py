"""Supervised warm start: expert demonstrations (`expert`), the text SFT trainer (`trainer`) and the
vision SFT trainer (`vision`). No Ray."""
