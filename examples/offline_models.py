"""A tokenizer and a tiny model built on the spot, so the examples and the integration tests run
offline: nothing is downloaded from a model hub.

The tokenizer is word-level (``tokenizers``) wrapped in ``PreTrainedTokenizerFast`` and saved
with ``save_pretrained``, so ``AutoTokenizer.from_pretrained(directory)`` loads it as it would a
hub tokenizer. The model is a randomly initialized one-layer ``LlamaForCausalLM``: it trains and
generates on CPU in seconds, and what it says is noise, which is all a plumbing example needs.
"""

from __future__ import annotations

from pathlib import Path

#: Words the tiny models can say; the examples' prompts use only these.
WORDS = ["yes", "no", "maybe", "the", "answer", "is", "a", "an", "of", "to", "and", "one", "two", "three", "four",
         "five", "six", "seven", "eight", "nine", "ten", "what", "add", "plus", "equals", "count", "say", "word",
         "long", "short", "very"]
SPECIAL = ("[PAD]", "[UNK]", "[BOS]", "[EOS]")


def save_word_tokenizer(directory: str | Path) -> str:
    """Save a word-level tokenizer over ``WORDS`` in ``directory``; return the directory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: index for index, token in enumerate((*SPECIAL, *WORDS))}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="[PAD]", unk_token="[UNK]",
                                   bos_token="[BOS]", eos_token="[EOS]")
    fast.save_pretrained(str(directory))
    return str(directory)


def save_tiny_llama(directory: str | Path, seed: int = 0) -> str:
    """Save the tokenizer and a random one-layer Llama over its vocabulary in ``directory``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    save_word_tokenizer(directory)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(SPECIAL) + len(WORDS), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=128, pad_token_id=0, bos_token_id=2, eos_token_id=3)
    LlamaForCausalLM(config).save_pretrained(str(directory))
    return str(directory)
