"""Article analysis: the encoder, language, normalisation, classification and rule matching."""
