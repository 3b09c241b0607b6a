"""The model: MFCC features, the packed-LSTM keyword spotter, checkpoints, the scorer and the portable export form."""
