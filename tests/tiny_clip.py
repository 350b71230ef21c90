"""The smallest CLIP the tests build with random weights: one block on each side, width 64, and a
100-token vocabulary (no tokenizer files needed). ``TWO_HEADS`` has two vision blocks of two heads, for
tests that take the last block apart."""

TINY_CLIP = {
    "projection_dim": 16,
    "vision_config": {"hidden_size": 64, "num_attention_heads": 1, "intermediate_size": 128, "num_hidden_layers": 1},
    "text_config": {"hidden_size": 64, "num_attention_heads": 1, "intermediate_size": 128, "num_hidden_layers": 1,
                    "vocab_size": 100, "bos_token_id": 98, "eos_token_id": 99, "pad_token_id": 99},
}

TWO_HEADS = {**TINY_CLIP, "vision_config": {**TINY_CLIP["vision_config"], "num_attention_heads": 2,
                                             "num_hidden_layers": 2}}
