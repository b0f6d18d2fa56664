"""A tiny Qwen3-shaped model whose greedy output is fixed by construction (no hub, no download).

`write_tiny_thinking_model(dir)` writes config.json, generation_config.json, model.safetensors,
tokenizer.json and tokenizer_config.json (with a reduced Qwen3 chat template that honours
`enable_thinking`). About 1.6 MB in all (BF16 weights), identical bytes on every call.

How the weights make a next-token machine
-----------------------------------------
* Every attention `o_proj` and MLP `down_proj` is zero (so are q/k/v/gate/up), so neither
  sub-layer adds anything to the residual stream: the last hidden state is the embedding of the
  *current* token. (q = k = 0 makes q_norm/k_norm output 0 and rotary a no-op; they cannot
  reach the residual stream through a zero o_proj either.)
* `embed_tokens` is one-hot: row t is e_t (hidden_size 256 >= vocab_size 64).
* The final RMSNorm (weight 1) turns e_t into sqrt(256) * e_t = 16 * e_t.
* `lm_head` (tie_word_embeddings false) has W[NEXT[t], t] = 4 and zero elsewhere, so the logit of
  NEXT[t] is 64 and every other logit is 0: greedy (or any sane temperature) emits NEXT[t], a
  function of the last token only. Token ids without an entry in NEXT go to <|im_end|> (EOS).

The chains (t -> NEXT[t]):
* thinking on, the prompt ends "<|im_start|>assistant\\n":
  "\\n" -> "<think>" -> "reason" -> "</think>" -> "answer" -> "<|im_end|>"
* thinking off, the template appends "<think>\\n\\n</think>\\n\\n": the last prompt token is
  "\\n\\n" (its own token), so "\\n\\n" -> "answer" -> "<|im_end|>".

The tokenizer is a WordLevel model (tokenizers library) with a pre-tokenizer that splits runs of
newlines, runs of other white space and runs of non-space characters, and a Fuse decoder (tokens
are concatenated as they are). `<|endoftext|>`, `<|im_start|>`, `<|im_end|>` are special added
tokens and `<think>`, `</think>` non-special added tokens, as Qwen3's tokenizer marks them: the
reasoning parser looks them up in the vocabulary as single tokens, and the non-special ones stay
in the decoded text.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

HIDDEN = 256
INTERMEDIATE = 256
LAYERS = 2
HEADS = 4
KV_HEADS = 2
HEAD_DIM = 64
VOCAB_SIZE = 64  # config vocab (embedding rows); the tokenizer uses the first len(VOCAB) ids
LOGIT = 4.0  # lm_head weight; times sqrt(HIDDEN) = 16 after the final norm -> logit 64

# word-level vocabulary (ids are positions)
WORDS = ["\n", "\n\n", " ", "user", "assistant", "system", "Hello", "Hi", "reason", "answer", "<unk>"]
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # special: True (as in Qwen3)
THINK = ["<think>", "</think>"]  # special: False (as in Qwen3)
VOCAB = {tok: i for i, tok in enumerate(WORDS + SPECIAL + THINK)}
EOS = "<|im_end|>"

NEXT = {
    "\n": "<think>",  # thinking on: the prompt ends with "<|im_start|>assistant\n"
    "<think>": "reason",
    "reason": "</think>",
    "</think>": "answer",
    "\n\n": "answer",  # thinking off: the prompt ends with "<think>\n\n</think>\n\n"
    "answer": EOS,
}

# Qwen3's chat template (Qwen/Qwen3-*-2504 tokenizer_config.json) without the tool branches:
# system / user / assistant turns, <think> blocks stripped from earlier assistant turns, and the
# generation prompt with the `enable_thinking` switch exactly as Qwen3 writes it.
CHAT_TEMPLATE = (
    "{%- if messages[0].role == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.content is string %}{%- set content = message.content %}"
    "{%- else %}{%- set content = '' %}{%- endif %}"
    "{%- if (message.role == 'user') or (message.role == 'system' and not loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>' + '\\n' }}"
    "{%- elif message.role == 'assistant' %}"
    "{%- if '</think>' in content %}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') %}"
    "{%- endif %}"
    "{{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)


def _config() -> dict:
    return {
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "torch_dtype": "bfloat16",
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "head_dim": HEAD_DIM,
        "vocab_size": VOCAB_SIZE,
        "tie_word_embeddings": False,
        "max_position_embeddings": 4096,
        "rope_theta": 1000000,
        "rope_scaling": None,
        "rms_norm_eps": 1e-06,
        "hidden_act": "silu",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "sliding_window": None,
        "use_sliding_window": False,
        "max_window_layers": LAYERS,
        "use_cache": True,
        "bos_token_id": VOCAB["<|endoftext|>"],
        "eos_token_id": VOCAB[EOS],
    }


def _weights() -> dict[str, np.ndarray]:
    f32 = np.float32
    embed = np.zeros((VOCAB_SIZE, HIDDEN), f32)
    embed[np.arange(VOCAB_SIZE), np.arange(VOCAB_SIZE)] = 1.0  # one-hot rows
    lm_head = np.zeros((VOCAB_SIZE, HIDDEN), f32)
    nxt = [VOCAB[EOS]] * VOCAB_SIZE
    for tok, after in NEXT.items():
        nxt[VOCAB[tok]] = VOCAB[after]
    for t in range(VOCAB_SIZE):
        lm_head[nxt[t], t] = LOGIT
    w = {
        "model.embed_tokens.weight": embed,
        "model.norm.weight": np.ones(HIDDEN, f32),
        "lm_head.weight": lm_head,
    }
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = np.ones(HIDDEN, f32)
        w[p + "post_attention_layernorm.weight"] = np.ones(HIDDEN, f32)
        w[p + "self_attn.q_proj.weight"] = np.zeros((HEADS * HEAD_DIM, HIDDEN), f32)
        w[p + "self_attn.k_proj.weight"] = np.zeros((KV_HEADS * HEAD_DIM, HIDDEN), f32)
        w[p + "self_attn.v_proj.weight"] = np.zeros((KV_HEADS * HEAD_DIM, HIDDEN), f32)
        w[p + "self_attn.o_proj.weight"] = np.zeros((HIDDEN, HEADS * HEAD_DIM), f32)
        w[p + "self_attn.q_norm.weight"] = np.ones(HEAD_DIM, f32)
        w[p + "self_attn.k_norm.weight"] = np.ones(HEAD_DIM, f32)
        w[p + "mlp.gate_proj.weight"] = np.zeros((INTERMEDIATE, HIDDEN), f32)
        w[p + "mlp.up_proj.weight"] = np.zeros((INTERMEDIATE, HIDDEN), f32)
        w[p + "mlp.down_proj.weight"] = np.zeros((HIDDEN, INTERMEDIATE), f32)
    return w


def _tokenizer_json() -> str:
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel(vocab={w: VOCAB[w] for w in WORDS}, unk_token="<unk>"))
    # runs of newlines | runs of other white space | runs of anything else
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"\n+|[^\S\n]+|\S+"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    # ids must match VOCAB: added tokens take the next free ids in the order given
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK])
    for t, i in VOCAB.items():
        assert tok.token_to_id(t) == i, (t, tok.token_to_id(t), i)
    return tok.to_str(pretty=True)


def _tokenizer_config() -> dict:
    added = {
        str(VOCAB[t]): {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": t in SPECIAL,
        }
        for t in SPECIAL + THINK
    }
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": added,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": None,
        "eos_token": EOS,
        "pad_token": "<|endoftext|>",
        "unk_token": "<unk>",
        "clean_up_tokenization_spaces": False,
        "model_max_length": 4096,
        "split_special_tokens": False,
        "chat_template": CHAT_TEMPLATE,
    }


def _save_bf16_safetensors(tensors: dict[str, np.ndarray], path: Path) -> None:
    """Write float32 arrays as a BF16 safetensors file (numpy has no bfloat16, and
    safetensors.numpy cannot write one). BF16 is the top half of a float32; every value used
    here (0, 1, LOGIT) is exact in it. Format: u64 LE header size, JSON header, raw data."""
    header: dict = {"__metadata__": {"format": "pt"}}
    blobs, offset = [], 0
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name], dtype=np.float32)
        raw = (a.view(np.uint32) >> 16).astype("<u2").tobytes()
        header[name] = {"dtype": "BF16", "shape": list(a.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as f:
        f.write(len(head).to_bytes(8, "little"))
        f.write(head)
        for raw in blobs:
            f.write(raw)


def write_tiny_thinking_model(dir: Path) -> None:
    """Write the whole model directory into `dir` (created if missing)."""
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)

    def dump(name: str, obj: dict) -> None:
        (dir / name).write_text(json.dumps(obj, indent=2) + "\n")

    dump("config.json", _config())
    dump(
        "generation_config.json",
        {
            "bos_token_id": VOCAB["<|endoftext|>"],
            "eos_token_id": [VOCAB[EOS], VOCAB["<|endoftext|>"]],
            "pad_token_id": VOCAB["<|endoftext|>"],
            "do_sample": False,
        },
    )
    _save_bf16_safetensors(_weights(), dir / "model.safetensors")
    (dir / "tokenizer.json").write_text(_tokenizer_json())
    dump("tokenizer_config.json", _tokenizer_config())


def expected_output(last_prompt_token: str, max_tokens: int = 16) -> list[str]:
    """The tokens greedy decoding emits after a prompt ending in `last_prompt_token`
    (EOS included), computed from NEXT, for tests and sanity checks."""
    out, t = [], last_prompt_token
    while len(out) < max_tokens:
        t = NEXT.get(t, EOS)
        out.append(t)
        if t == EOS:
            break
    return out


if __name__ == "__main__":
    import sys

    write_tiny_thinking_model(Path(sys.argv[1]))
