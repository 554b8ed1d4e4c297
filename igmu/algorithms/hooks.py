"""Looking inside the UNet and the prompt, shared by the wave-2 algorithms: where a concept's tokens
sit in a prompt, the cross-attention maps of every `attn2` (FMN, MACE), the input norms of the FFN
output layers (ConceptPrune), rank-r LoRA adapters on linear layers (MACE) and learnable prefix
token embeddings spliced in after BOS (AdvUnlearn's attack, and the robustness metric's). The world's UNet is
a diffusers `UNet2DConditionModel` and its text encoder a CLIP, so the same code serves the world
and Stable Diffusion."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import torch

from igmu.models.text_to_image import Generator

CROSS_ATTENTION_SUFFIX = "attn2"
FFN_OUTPUT_SUFFIX = "ff.net.2"


# --- token positions ---------------------------------------------------------------------------

def token_positions(tokenizer, prompt: str, words: str, include_eos: bool = False) -> list[int]:
    """Indices of `words`' tokens in the padded, tokenized `prompt` (every occurrence), plus the
    prompt's first end-of-text token with `include_eos` (FMN's `use_pooler`: the pooled token carries
    the whole prompt, the concept included). Only the first EOS counts: SD 1.x pads with EOS, and
    the padding carries no concept."""
    ids = tokenizer(prompt, padding="max_length", truncation=True, max_length=tokenizer.model_max_length).input_ids
    concept = tokenizer(words, add_special_tokens=False).input_ids
    positions = []
    for start in range(len(ids) - len(concept) + 1):
        if concept and ids[start:start + len(concept)] == concept:
            positions.extend(range(start, start + len(concept)))
    if include_eos and tokenizer.eos_token_id in ids:
        positions.append(ids.index(tokenizer.eos_token_id))
    return sorted(set(positions))


def position_mask(tokenizer, prompts: list[str], words: str, include_eos: bool = False) -> torch.Tensor:
    """[B, L] booleans: True at each prompt's concept positions (`token_positions`)."""
    mask = torch.zeros(len(prompts), tokenizer.model_max_length, dtype=torch.bool)
    for row, prompt in enumerate(prompts):
        mask[row, token_positions(tokenizer, prompt, words, include_eos)] = True
    return mask


# --- prefix token embeddings (UnlearnDiffAtk's and AdvUnlearn's `prefix_k` attack) ------------

@contextmanager
def prefix_embeddings(text_encoder: torch.nn.Module, prefix: torch.Tensor) -> Iterator[None]:
    """While active, the text encoder's token embeddings right after BOS are `prefix` [B, K, D] (or
    [1, K, D], one prefix shared by the whole batch): a forward hook on the token embedding table,
    so the position embeddings, the encoder and its gradients stay the model's own. Feed it
    `prefixed_ids`, whose K slots after BOS the prefix replaces."""
    table = text_encoder.get_input_embeddings()

    def swap(_module, _inputs, output):
        k = prefix.shape[1]
        spliced = prefix.to(output.dtype).expand(output.shape[0], -1, -1)
        return torch.cat([output[:, :1], spliced, output[:, 1 + k:]], dim=1)

    handle = table.register_forward_hook(swap)
    try:
        yield
    finally:
        handle.remove()


def prefixed_ids(generator: Generator, prompts: list[str], n_prefix: int) -> torch.Tensor:
    """Token ids with `n_prefix` placeholder slots after BOS (their embeddings get replaced): the
    prompt moves right by `n_prefix` and its last `n_prefix` (padding) positions drop off."""
    ids = generator.tokenize(prompts)
    placeholder = torch.full((len(prompts), n_prefix), generator.tokenizer.unk_token_id or 0, device=ids.device)
    return torch.cat([ids[:, :1], placeholder, ids[:, 1:-n_prefix]], dim=1)


def random_token_embeddings(text_encoder: torch.nn.Module, shape: tuple[int, int], rng: torch.Generator) -> torch.Tensor:
    """Embeddings [shape[0], shape[1], D] of tokens drawn uniformly from the vocabulary: the attacks'
    starting prefix (random words)."""
    table = text_encoder.get_input_embeddings().weight.detach()
    start = torch.randint(0, len(table), shape, generator=rng)
    return table[start.to(table.device)].clone().float()


# --- cross-attention maps ----------------------------------------------------------------------

def cross_attention_layers(unet: torch.nn.Module) -> dict[str, torch.nn.Module]:
    return {name: module for name, module in unet.named_modules() if name.endswith(CROSS_ATTENTION_SUFFIX)}


@dataclass
class AttentionMaps:
    """Cross-attention probabilities recorded during forward passes: per layer name, a list of
    [B, heads, queries, tokens] tensors (one per forward pass), with their graph kept."""

    by_layer: dict[str, list[torch.Tensor]] = field(default_factory=dict)

    def record(self, name: str, probs: torch.Tensor) -> None:
        self.by_layer.setdefault(name, []).append(probs)

    def all(self) -> list[torch.Tensor]:
        return [probs for maps in self.by_layer.values() for probs in maps]


class CapturingAttnProcessor:
    """diffusers' classic `AttnProcessor` (softmax(QK^T / sqrt(d)) V written out), recording the
    attention probabilities it computes. The fused SDPA processors never materialise them."""

    def __init__(self, name: str, maps: AttentionMaps):
        self.name = name
        self.maps = maps

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        # Copied from diffusers.models.attention_processor.AttnProcessor.__call__ (diffusers 0.42),
        # with the probabilities recorded between the softmax and the weighted sum.
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape)
        attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
        value = attn.head_to_batch_dim(attn.to_v(encoder_hidden_states))
        query = attn.head_to_batch_dim(query)
        probs = attn.get_attention_scores(query, key, attention_mask)
        # head_to_batch_dim stacks batch-major: row b * heads + h is sample b, head h.
        self.maps.record(self.name, probs.view(batch_size, attn.heads, *probs.shape[1:]))
        hidden_states = attn.batch_to_head_dim(torch.bmm(probs, value))
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


@contextmanager
def capture_cross_attention(unet: torch.nn.Module) -> Iterator[AttentionMaps]:
    """Within the block every `attn2` records its attention probabilities into the yielded maps;
    the original processors come back afterwards."""
    maps = AttentionMaps()
    layers = cross_attention_layers(unet)
    originals = {name: module.processor for name, module in layers.items()}
    for name, module in layers.items():
        module.set_processor(CapturingAttnProcessor(name, maps))
    try:
        yield maps
    finally:
        for name, module in layers.items():
            module.set_processor(originals[name])


def attention_at(probs: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """The attention paid to the masked token positions: probs [B, heads, Q, L], positions [B, L]
    booleans -> [B, heads, Q, L] with every other token's column zeroed."""
    return probs * positions[:, None, None, :].to(probs)


# --- FFN input norms (WANDA's ||X||) -----------------------------------------------------------

def ffn_output_layers(unet: torch.nn.Module) -> dict[str, torch.nn.Linear]:
    """The second linear of every transformer block's feed-forward (`ff.net.2`)."""
    return {name: module for name, module in unet.named_modules() if name.endswith(FFN_OUTPUT_SUFFIX)}


@dataclass
class InputNorms:
    """Per (sampler step, layer): the sum over every token row of the squared input, per input
    feature, and how many rows were summed. `norms()` gives WANDA's ||X_j|| over the rows seen."""

    steps: int
    squares: dict[tuple[int, str], torch.Tensor] = field(default_factory=dict)
    rows: dict[tuple[int, str], int] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)

    def record(self, name: str, inputs: torch.Tensor) -> None:
        # One UNet call per sampler step (guidance batches its two halves into one call), so a
        # layer's k-th call is step k mod steps: sample() restarts the sampler for each prompt chunk.
        step = self.calls.get(name, 0) % self.steps
        self.calls[name] = self.calls.get(name, 0) + 1
        flat = inputs.detach().float().reshape(-1, inputs.shape[-1])
        key = (step, name)
        self.squares[key] = self.squares.get(key, 0) + flat.pow(2).sum(0).cpu()
        self.rows[key] = self.rows.get(key, 0) + flat.shape[0]

    def norms(self, step: int, name: str) -> torch.Tensor:
        """||X_j|| of the mean squared row, so prompt sets of different sizes compare."""
        return (self.squares[(step, name)] / self.rows[(step, name)]).sqrt()


@contextmanager
def record_ffn_inputs(unet: torch.nn.Module, steps: int) -> Iterator[InputNorms]:
    """Within the block every `ff.net.2` records its input norms per sampler step."""
    norms = InputNorms(steps)
    handles = []
    for name, module in ffn_output_layers(unet).items():
        def hook(module, args, name=name):
            norms.record(name, args[0])
        handles.append(module.register_forward_pre_hook(hook))
    try:
        yield norms
    finally:
        for handle in handles:
            handle.remove()


# --- LoRA adapters -----------------------------------------------------------------------------

class LoRA(torch.nn.Module):
    """A rank-r update W + up @ down of one linear layer, added to its output by a forward hook
    (diffusers' LoRALinearLayer init: down ~ N(0, 1/r), up = 0, so training starts at W)."""

    def __init__(self, layer: torch.nn.Linear, rank: int, generator: torch.Generator):
        super().__init__()
        down = torch.randn(rank, layer.in_features, generator=generator) / rank
        self.down = torch.nn.Parameter(down.to(layer.weight))
        self.up = torch.nn.Parameter(torch.zeros(layer.out_features, rank).to(layer.weight))
        self.handle = layer.register_forward_hook(self.add_update)

    def add_update(self, layer, args, output):
        return output + args[0] @ self.down.T @ self.up.T

    def delta(self) -> torch.Tensor:
        """The weight update up @ down [out, in]."""
        return self.up @ self.down

    def remove(self) -> None:
        self.handle.remove()


def attach_lora(layers: dict[str, torch.nn.Linear], rank: int, generator: torch.Generator) -> dict[str, LoRA]:
    return {name: LoRA(layer, rank, generator) for name, layer in layers.items()}
