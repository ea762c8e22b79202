"""Supervised warm start: expert demonstrations (`expert`), the text SFT trainer (`trainer`), the
vision SFT trainer (`vision`) and the loss both trainers use (`loss`). No Ray."""
