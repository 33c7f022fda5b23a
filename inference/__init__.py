"""Using a trained model: load it, encode images and texts, search a catalogue, look at results, export."""
