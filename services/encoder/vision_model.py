"""Our InternViT vision tower + pixel-shuffle MLP projector, numerically matching transformers.

Parameter names equal transformers' (under `model.vision_tower.` and `model.multi_modal_projector.`), so
checkpoint tensors map one to one. Attention runs through PyTorch SDPA (non-causal, every tile separate).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN

from internvl_serve.checkpoint import Checkpoint, CheckpointError, assign
from internvl_serve.common.layers import RMSNorm
from internvl_serve.common.quantization import quantize_linears


def _norm(config, dim: int) -> nn.Module:
    if config.norm_type == "rms_norm":
        return RMSNorm(dim, config.layer_norm_eps)
    return nn.LayerNorm(dim, eps=config.layer_norm_eps)


class PatchEmbeddings(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.projection = nn.Conv2d(
            config.num_channels, config.hidden_size, kernel_size=config.patch_size, stride=config.patch_size
        )


class Embeddings(nn.Module):
    def __init__(self, config):
        super().__init__()
        if config.use_mask_token:
            raise CheckpointError("vision_config.use_mask_token=True is not an InternVL3 inference setting")
        h, w = config.image_size
        ph, pw = config.patch_size
        self.patch_size = (ph, pw)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.patch_embeddings = PatchEmbeddings(config)
        self.position_embeddings = (
            nn.Parameter(torch.zeros(1, (h // ph) * (w // pw) + 1, config.hidden_size))
            if config.use_absolute_position_embeddings
            else None
        )

    def _positions(self, num_patches: int, height: int, width: int) -> torch.Tensor:
        pos = self.position_embeddings
        if num_patches == pos.shape[1] - 1 and height == width:
            return pos
        # Tiles of another size than the checkpoint's: bicubic-resize the patch grid, as transformers does.
        side = int((pos.shape[1] - 1) ** 0.5)
        grid = pos[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(
            grid, size=(height // self.patch_size[0], width // self.patch_size[1]), mode="bicubic", align_corners=False
        )
        return torch.cat((pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, -1, pos.shape[-1])), dim=1)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        _, _, height, width = pixel_values.shape
        conv = self.patch_embeddings.projection
        x = conv(pixel_values.to(conv.weight.dtype)).flatten(2).transpose(1, 2)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        if self.position_embeddings is not None:
            x = x + self._positions(x.shape[1] - 1, height, width)
        return x


class Attention(nn.Module):
    def __init__(self, config):
        super().__init__()
        dim = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = dim // self.num_heads
        self.q_proj = nn.Linear(dim, dim, bias=config.attention_bias)
        self.k_proj = nn.Linear(dim, dim, bias=config.attention_bias)
        self.v_proj = nn.Linear(dim, dim, bias=config.attention_bias)
        self.projection_layer = nn.Linear(dim, dim)
        self.q_norm = RMSNorm(dim, config.layer_norm_eps) if config.use_qk_norm else nn.Identity()
        self.k_norm = RMSNorm(dim, config.layer_norm_eps) if config.use_qk_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, dim = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2)

        q = heads(self.q_norm(self.q_proj(x)))
        k = heads(self.k_norm(self.k_proj(x)))
        v = heads(self.v_proj(x))
        out = F.scaled_dot_product_attention(q, k, v, scale=self.head_dim**-0.5)
        return self.projection_layer(out.transpose(1, 2).reshape(b, n, dim))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.act = ACT2FN[config.hidden_act]
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Layer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.attention = Attention(config)
        self.mlp = MLP(config)
        self.layernorm_before = _norm(config, config.hidden_size)
        self.layernorm_after = _norm(config, config.hidden_size)
        self.lambda_1 = nn.Parameter(torch.ones(config.hidden_size))  # layer scale
        self.lambda_2 = nn.Parameter(torch.ones(config.hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.lambda_1 * self.attention(self.layernorm_before(x))
        return x + self.lambda_2 * self.mlp(self.layernorm_after(x))


class VisionLayerStack(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.layer = nn.ModuleList(Layer(config) for _ in range(config.num_hidden_layers))


class VisionTower(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.embeddings = Embeddings(config)
        self.encoder = VisionLayerStack(config)
        # With mean pooling the tower's final norm is an identity (it has no weights).
        self.layernorm = nn.Identity() if config.use_mean_pooling else _norm(config, config.hidden_size)


class Projector(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, act: str):
        super().__init__()
        self.layer_norm = nn.LayerNorm(in_dim)  # PyTorch's default eps 1e-5, not the vision config's
        self.linear_1 = nn.Linear(in_dim, out_dim)
        self.act = ACT2FN[act]
        self.linear_2 = nn.Linear(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(self.layer_norm(x))))


def pixel_shuffle(x: torch.Tensor, scale: float) -> torch.Tensor:
    """[B, W, H, C] -> [B, H*s, W*s, C/s^2] exactly as transformers' InternVLModel.pixel_shuffle."""
    b, w, h, c = x.shape
    x = x.view(b, w, int(h * scale), int(c / scale)).permute(0, 2, 1, 3).contiguous()
    x = x.view(b, int(h * scale), int(w * scale), int(c / scale**2))
    return x.permute(0, 2, 1, 3).contiguous()


class VisionTowerWithProjector(nn.Module):
    """pixel_values [tiles, 3, H, W] -> projected embeddings [tiles, tokens_per_tile, text_hidden]."""

    def __init__(self, config):
        super().__init__()
        vc = config.vision_config
        if config.vision_feature_select_strategy != "default":
            raise CheckpointError(
                f"vision_feature_select_strategy={config.vision_feature_select_strategy!r} is not supported "
                "(InternVL3 uses 'default': drop the CLS token)"
            )
        layer = config.vision_feature_layer
        if not isinstance(layer, int):
            raise CheckpointError(f"vision_feature_layer={layer!r}: only a single layer index is supported")
        n = vc.num_hidden_layers
        # hidden_states[k] is the output after k layers (k=0: embeddings); -1 means the final, normed output.
        self.layers_to_run = n if layer == -1 else (layer if layer >= 0 else n + 1 + layer)
        self.final_norm = layer == -1
        self.scale = config.downsample_ratio
        self.vision_tower = VisionTower(vc)
        factor = int(1 / config.downsample_ratio) ** 2
        self.multi_modal_projector = Projector(
            vc.hidden_size * factor, config.text_config.hidden_size, config.projector_hidden_act
        )

    @torch.inference_mode()
    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        tower = self.vision_tower
        x = tower.embeddings(pixel_values)
        for layer in tower.encoder.layer[: self.layers_to_run]:
            x = layer(x)
        if self.final_norm:
            x = tower.layernorm(x)
        x = x[:, 1:, :]  # drop CLS
        side = int(x.shape[1] ** 0.5)
        x = pixel_shuffle(x.reshape(x.shape[0], side, side, -1), self.scale)
        return self.multi_modal_projector(x.reshape(x.shape[0], -1, x.shape[-1]))

    @classmethod
    def from_state(
        cls, config, state: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32, device="cpu", quant=None
    ) -> "VisionTowerWithProjector":
        """Build on the meta device, then take the vision + projector tensors of `state` (canonical names).
        `quant`: QuantSettings; when enabled, every Linear is quantized (transformers quantizes them all)."""
        with torch.device("meta"):
            model = cls(config)
        model.to_empty(device=device)
        assign(model.vision_tower, state, "model.vision_tower.")
        assign(model.multi_modal_projector, state, "model.multi_modal_projector.")
        model = model.to(dtype).eval()
        if quant is not None and quant.enabled:
            quantize_linears(model, quant)
        return model

    @classmethod
    def from_checkpoint(
        cls, ckpt: Checkpoint, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
    ) -> "VisionTowerWithProjector":
        """Load only the vision tower and projector tensors of a checkpoint."""
        state, _ = ckpt.load("vision", dtype=dtype)
        return cls.from_state(ckpt.config, state, dtype, device)
