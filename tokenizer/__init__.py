"""SentencePiece tokenizer trained from corpus shards (:mod:`.train`), exported to Hugging Face
tokenizer.json (:mod:`.hf`), and the token-shard format the trainer reads (:mod:`.tokens`)."""
