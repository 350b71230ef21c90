"""The smallest CLIP the tests build with random weights: one block on each side, width 64, and a
100-token vocabulary (no tokenizer files needed)."""

TINY_CLIP = {
    "projection_dim": 16,
    "vision_config": {"hidden_size": 64, "num_attention_heads": 1, "intermediate_size": 128, "num_hidden_layers": 1},
    "text_config": {"hidden_size": 64, "num_attention_heads": 1, "intermediate_size": 128, "num_hidden_layers": 1,
                    "vocab_size": 100, "bos_token_id": 98, "eos_token_id": 99, "pad_token_id": 99},
}
