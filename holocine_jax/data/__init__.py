"""Real data in: manifest lines, video decoding, shot cuts, encoders and resumable shards."""
