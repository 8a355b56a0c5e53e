"""Training stack: data (synthetic, tfds ArrayRecord, grain), flow-matching loss, step, loop."""
