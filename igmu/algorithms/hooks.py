"""Looking inside the UNet and the prompt, shared by the wave-2 algorithms: where a concept's tokens
sit in a prompt, the cross-attention maps of every `attn2` (FMN, MACE), the input norms of the FFN
output layers (ConceptPrune), rank-r LoRA adapters on linear and convolution layers (MACE,
SPM), bottleneck adapters on layer outputs (Receler's erasers) and learnable prefix token
embeddings spliced in after BOS (AdvUnlearn's attack, and the robustness metric's). The world's
UNet is a diffusers `UNet2DConditionModel` and its text encoder a CLIP, so the same code serves the
world and Stable Diffusion."""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Literal

import torch
import torch.nn.functional as F

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

# SPM's membrane sites: every linear and convolution inside these blocks (diffusers' transformer
# blocks of the UNet: attention and feed-forward linears, and proj_in / proj_out).
TRANSFORMER_BLOCK_CLASSES = ("Transformer2DModel",)
LoRAInit = Literal["normal", "kaiming-uniform"]


class LoRA(torch.nn.Module):
    """A rank-r update W + (alpha / r) up @ down of one linear or convolution layer, added to its
    output by a forward hook; up = 0, so training starts at W. `down` starts as diffusers'
    LoRALinearLayer (N(0, 1/r), the default) or as kohya's / SPM's (`kaiming-uniform`: U(-1/sqrt(fan_in),
    1/sqrt(fan_in)), torch's kaiming_uniform_ with a = sqrt(5)). Without `alpha` the scale is 1.
    A convolution's `down` is a convolution of the layer's own kernel, stride, padding and dilation
    and its `up` a 1x1 convolution, so the update is still the rank-r weight up @ down. `enabled`
    False switches the update off (SPM's epsilon*: the same UNet without its membrane)."""

    def __init__(self, layer: torch.nn.Module, rank: int, generator: torch.Generator,
                 alpha: float | None = None, init: LoRAInit = "normal"):
        super().__init__()
        kernel = _kernel_shape(layer)
        fan_in = _in_features(layer) * math.prod(kernel)
        if init == "normal":
            down = torch.randn(rank, fan_in, generator=generator) / rank
        elif init == "kaiming-uniform":
            down = (torch.rand(rank, fan_in, generator=generator) * 2 - 1) / math.sqrt(fan_in)
        else:
            raise ValueError(f"unknown LoRA init {init!r}; valid: normal, kaiming-uniform")
        self.scale = 1.0 if alpha is None else alpha / rank
        self.enabled = True
        self.conv = _conv_arguments(layer)
        self.down = torch.nn.Parameter(down.view(rank, -1, *kernel).to(layer.weight))
        self.up = torch.nn.Parameter(torch.zeros(_out_features(layer), rank, *(1,) * len(kernel)).to(layer.weight))
        self.handle = layer.register_forward_hook(self.add_update)

    def add_update(self, layer, args, output):
        if not self.enabled:
            return output
        if self.conv is None:
            update = args[0] @ self.down.T @ self.up.T
        else:
            update = F.conv2d(F.conv2d(args[0], self.down, **self.conv), self.up)
        return output + update * self.scale if self.scale != 1.0 else output + update

    def delta(self) -> torch.Tensor:
        """The weight update (alpha / r) up @ down, shaped as the layer's weight."""
        update = self.up.flatten(1) @ self.down.flatten(1)
        update = update if self.scale == 1.0 else update * self.scale
        return update.view(self.up.shape[0], *self.down.shape[1:]) if self.conv is not None else update

    @torch.no_grad()
    def fuse_into(self, layer: torch.nn.Module) -> None:
        """W <- W + (alpha / r) up @ down, then drop the hook: the layer alone now gives what the
        layer with its LoRA gave."""
        layer.weight.add_(self.delta().to(layer.weight))
        self.remove()

    def remove(self) -> None:
        self.handle.remove()


def _kernel_shape(layer: torch.nn.Module) -> tuple[int, ...]:
    if isinstance(layer, torch.nn.Linear):
        return ()
    if isinstance(layer, torch.nn.Conv2d):
        if layer.groups != 1 or layer.padding_mode != "zeros":
            raise ValueError("a LoRA on a convolution needs groups=1 and zero padding")
        return tuple(layer.kernel_size)
    raise ValueError(f"a LoRA needs a Linear or Conv2d layer, not {type(layer).__name__}")


def _in_features(layer: torch.nn.Module) -> int:
    return layer.in_features if isinstance(layer, torch.nn.Linear) else layer.in_channels


def _out_features(layer: torch.nn.Module) -> int:
    return layer.out_features if isinstance(layer, torch.nn.Linear) else layer.out_channels


def _conv_arguments(layer: torch.nn.Module) -> dict | None:
    if isinstance(layer, torch.nn.Linear):
        return None
    return {"stride": layer.stride, "padding": layer.padding, "dilation": layer.dilation}


def attach_lora(layers: dict[str, torch.nn.Module], rank: int, generator: torch.Generator,
                alpha: float | None = None, init: LoRAInit = "normal") -> dict[str, LoRA]:
    return {name: LoRA(layer, rank, generator, alpha, init) for name, layer in layers.items()}


def transformer_block_layers(unet: torch.nn.Module,
                             block_classes: tuple[str, ...] = TRANSFORMER_BLOCK_CLASSES) -> dict[str, torch.nn.Module]:
    """Every Linear and Conv2d inside the UNet's transformer blocks, by full module name (SPM's
    membrane sites: its SPMNetwork walks the `Transformer2DModel` modules the same way)."""
    layers = {}
    for block_name, block in unet.named_modules():
        if type(block).__name__ in block_classes:
            for name, module in block.named_modules():
                if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
                    layers[f"{block_name}.{name}"] = module
    return layers


@contextmanager
def lora_disabled(loras: dict[str, LoRA]) -> Iterator[None]:
    """Within the block the LoRAs add nothing: the UNet is the one they were attached to."""
    states = {name: lora.enabled for name, lora in loras.items()}
    for lora in loras.values():
        lora.enabled = False
    try:
        yield
    finally:
        for name, lora in loras.items():
            lora.enabled = states[name]


# --- bottleneck adapters on layer outputs --------------------------------------------------------

# The name an adapter takes as a child of the layer it adapts (its tensors: `<layer>.adapter.*`).
ADAPTER_CHILD = "adapter"


class OutputAdapter(torch.nn.Module):
    """A bottleneck adapter added residually to a layer's output, y -> y + up(GELU(down(y)))
    (Receler's eraser). `down` starts as nn.Linear's default (uniform within 1/sqrt(features)),
    drawn from `generator`; `up` starts at zero, so a fresh adapter leaves the layer's output exactly
    as it was. The adapter is registered as the layer's child `adapter`, so its tensors are in the
    model's state_dict, and is applied by a forward hook on the layer. While `enabled` is False the
    layer's output passes unchanged; while `recording` is a list, every adapter output is appended."""

    # A model folder holds a UNet's weights, not the hooks that apply this module: `Generator.save`
    # refuses a UNet carrying it (see igmu.models.text_to_image.HELD_OUTSIDE_WEIGHTS).
    held_outside_weights = True

    def __init__(self, layer: torch.nn.Module, features: int, rank: int, generator: torch.Generator):
        super().__init__()
        reference = next(layer.parameters())
        bound = features ** -0.5
        self.down = torch.nn.Linear(features, rank)
        self.up = torch.nn.Linear(rank, features)
        with torch.no_grad():
            self.down.weight.copy_((torch.rand(rank, features, generator=generator) * 2 - 1) * bound)
            self.down.bias.copy_((torch.rand(rank, generator=generator) * 2 - 1) * bound)
            self.up.weight.zero_()
            self.up.bias.zero_()
        self.to(reference)
        self.enabled = True
        self.recording: list[torch.Tensor] | None = None
        layer.add_module(ADAPTER_CHILD, self)
        self.handle = layer.register_forward_hook(self.add_to_output)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.up(F.gelu(self.down(hidden_states)))

    def add_to_output(self, layer, args, output):
        if not self.enabled:
            return output
        delta = self(output)
        if self.recording is not None:
            self.recording.append(delta)
        return output + delta


def attach_cross_attention_adapters(unet: torch.nn.Module, rank: int,
                                    generator: torch.Generator) -> dict[str, OutputAdapter]:
    """One `OutputAdapter` of rank `rank` after every `attn2`, keyed by the attn2's name."""
    return {name: OutputAdapter(layer, layer.to_out[0].out_features, rank, generator)
            for name, layer in cross_attention_layers(unet).items()}


@contextmanager
def adapters_disabled(adapters: dict[str, OutputAdapter]) -> Iterator[None]:
    """Within the block the adapted layers compute as the original model's do."""
    previous = {name: adapter.enabled for name, adapter in adapters.items()}
    for adapter in adapters.values():
        adapter.enabled = False
    try:
        yield
    finally:
        for name, adapter in adapters.items():
            adapter.enabled = previous[name]


@contextmanager
def record_adapter_outputs(adapters: dict[str, OutputAdapter]) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Within the block every adapter appends its outputs (graph kept) to the yielded lists."""
    outputs: dict[str, list[torch.Tensor]] = {name: [] for name in adapters}
    for name, adapter in adapters.items():
        adapter.recording = outputs[name]
    try:
        yield outputs
    finally:
        for adapter in adapters.values():
            adapter.recording = None


def attach_saved_adapters(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> dict[str, OutputAdapter]:
    """Attach an `OutputAdapter` wherever `tensors` (a state_dict's, e.g. a run's changed tensors)
    hold one that `model` lacks, sized from its `down` weight, so that loading them gives back the
    adapted model (a sweep's held-out re-scoring of a Receler trial). Returns them by layer name."""
    modules = dict(model.named_modules())
    suffix = f".{ADAPTER_CHILD}.down.weight"
    added = {}
    for key, tensor in tensors.items():
        layer = key[:-len(suffix)]
        if key.endswith(suffix) and layer in modules and f"{layer}.{ADAPTER_CHILD}" not in modules:
            rank, features = tensor.shape
            # The initial values do not matter: the caller loads the saved ones over them.
            added[layer] = OutputAdapter(modules[layer], features, rank, torch.Generator().manual_seed(0))
    return added
