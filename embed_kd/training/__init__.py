"""Stage 4b — training dense students: YAML configs, example building, the sentence-transformers
trainer wiring, checkpoint weight averaging and the run manifest."""
