"""Files -> typed records -> Parquet shards: decoding, face crops, joints, folds, synthetic data.

Imports numpy, OpenCV, pyarrow and (for the gesture representations) torch; never Ray.
"""
