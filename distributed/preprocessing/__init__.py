"""Preprocessing machinery: its Ray tasks (one shard per task) and the synthetic demo sets,
written once and preprocessed through the real job."""
