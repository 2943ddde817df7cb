"""SentencePiece tokenizer trained from corpus shards, exported to Hugging Face tokenizer.json."""
