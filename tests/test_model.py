"""The aligner: official names and shapes, T5 faithfulness, masking, generation queries."""

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from engine.cli import app
from omnibridge import Aligner, AlignerConfig, get_config, list_configs
from omnibridge.bitransformer import BiTransformer, relative_position_bucket

REFERENCE = Path(__file__).parent / "data" / "omnibridge_official_params.tsv"


def tiny(**overrides) -> AlignerConfig:
    cfg = get_config("tiny").to_dict()
    cfg.update(overrides)
    return AlignerConfig.from_dict(cfg)


def test_official_params_cli_matches_reference_checkpoint_names():
    result = CliRunner().invoke(app, ["params", "--config", "official", "--tsv"])
    assert result.exit_code == 0, result.output
    got = [tuple(line.split("\t")) for line in result.output.splitlines()]
    rows = [line.rstrip("\n").split("\t") for line in REFERENCE.open() if not line.startswith("#")][1:]
    assert got == [(r[0], r[1]) for r in rows]  # same names, shapes and order
    assert len(got) == 316


def test_official_aligner_builds_on_meta_with_reference_total():
    from omnibridge.checkpoint import meta_aligner

    aligner = meta_aligner("official")
    assert all(p.is_meta for p in aligner.parameters())
    assert sum(p.numel() for p in aligner.parameters()) == 1_342_305_283
    assert aligner.logit_scale.dtype == torch.float32


def test_params_cli_rejects_unknown_config():
    result = CliRunner().invoke(app, ["params", "--config", "nope"])
    assert result.exit_code == 2
    assert "unknown config 'nope'" in result.output and "official" in result.output


def test_named_configs_are_listed():
    assert {"official", "bundled-small", "tiny"} <= set(list_configs())


def test_bad_cross_attention_ids_are_refused():
    with pytest.raises(ValueError, match="cross_attn_layer_ids"):
        tiny(cross_attn_layer_ids=[7])


def test_relative_buckets_match_transformers_t5():
    from transformers.models.t5.modeling_t5 import T5Attention

    rel = torch.arange(-300, 300)[None, :]
    ours = relative_position_bucket(rel, 32, 128)
    theirs = T5Attention._relative_position_bucket(rel, bidirectional=True, num_buckets=32, max_distance=128)
    assert torch.equal(ours, theirs)


def test_bitransformer_without_cross_attention_equals_a_t5_encoder():
    """Same weights by name, same inputs_embeds -> the same output as transformers' T5 encoder stack."""
    from transformers import T5Config, T5EncoderModel

    cfg = tiny(cross_attn_layer_ids=[], num_generation_queries=0, dropout=0.0)
    ours = BiTransformer(cfg).eval()
    t5 = T5EncoderModel(
        T5Config(d_model=cfg.d_model, d_kv=cfg.d_kv, d_ff=cfg.d_ff, num_layers=cfg.num_layers, num_heads=cfg.num_heads,
                 feed_forward_proj="gated-gelu", dropout_rate=0.0, relative_attention_num_buckets=32,
                 relative_attention_max_distance=128, vocab_size=10)
    ).eval()
    state = {k.removeprefix("encoder."): v for k, v in t5.state_dict().items() if k.startswith("encoder.")}
    state.pop("embed_tokens.weight")
    ours.load_state_dict(state)
    x = torch.randn(2, 7, cfg.d_model)
    memory = torch.randn(2, 3, cfg.d_model)
    with torch.no_grad():
        expected = t5.encoder(inputs_embeds=x).last_hidden_state
        got = ours(x, memory)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def _pad(x: torch.Tensor, n: int) -> torch.Tensor:
    return torch.cat([x, torch.full((x.shape[0], n - x.shape[1], x.shape[2]), 7.0)], dim=1)  # junk in padding


@pytest.mark.parametrize("modality", ["image", "text"])
def test_embedding_does_not_depend_on_batch_or_padding(modality):
    torch.manual_seed(0)
    aligner = Aligner(tiny()).eval()
    encode = aligner.encode_image if modality == "image" else aligner.encode_text
    a, b = torch.randn(1, 5, 32), torch.randn(1, 11, 32)
    alone = encode(a, torch.ones(1, 5, dtype=torch.bool))
    batch = torch.cat([_pad(a, 11), b])
    mask = torch.tensor([[True] * 5 + [False] * 6, [True] * 11])
    together = encode(batch, mask)
    for key in ("embeds", "query_branch", "backbone_branch"):
        torch.testing.assert_close(together[key][:1], alone[key], atol=1e-5, rtol=1e-5)
    # and a batch of one padded item gives the same as the unpadded item
    padded = encode(_pad(a, 11), mask[:1])
    torch.testing.assert_close(padded["embeds"], alone["embeds"], atol=1e-5, rtol=1e-5)


def test_the_official_unmasked_pooling_would_depend_on_padding():
    """Guard the test above: without the mask the backbone branch changes with padding (the official defect)."""
    torch.manual_seed(0)
    aligner = Aligner(tiny()).eval()
    a = torch.randn(1, 5, 32)
    h = aligner.downsampling_linear_layer(a)
    h_padded = torch.cat([h, torch.zeros(1, 6, h.shape[-1])], dim=1)  # official zero padding, no mask
    assert not torch.allclose(aligner.image_proj_1(h), aligner.image_proj_1(h_padded), atol=1e-4)


def test_fusion_gate_starts_at_one_half_and_embeddings_are_unit_norm():
    aligner = Aligner(tiny()).eval()
    out = aligner.encode_text(torch.randn(3, 4, 32))
    q, k = out["query_branch"], out["backbone_branch"]
    expected = torch.nn.functional.normalize(0.5 * q + 0.5 * k, dim=-1)
    torch.testing.assert_close(out["embeds"], expected)
    torch.testing.assert_close(out["embeds"].norm(dim=-1), torch.ones(3))


def test_generation_queries_replace_positions_by_rate():
    aligner = Aligner(tiny()).eval()
    x = torch.randn(2, 12, 32)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(aligner.bilm.replace_with_queries(x, 0.0, g), x)
    full = aligner.bilm.replace_with_queries(x, 1.0, g)
    assert torch.equal(full, aligner.bilm.query_tokens.expand(2, -1, -1))
    half = aligner.bilm.replace_with_queries(x, 0.5, g)
    replaced = (half == aligner.bilm.query_tokens).all(-1).float().mean()
    assert 0.2 < replaced < 0.8
    out = aligner.generation_queries(torch.randn(2, 5, 32))  # inference: zeros, everything replaced
    assert out.shape == (2, 12, 32)


def test_generation_queries_need_a_configuration_that_has_them():
    aligner = Aligner(tiny(num_generation_queries=0))
    with pytest.raises(ValueError, match="num_generation_queries"):
        aligner.generation_queries(torch.randn(1, 5, 32))


def test_official_weights_load_by_name_from_a_sharded_checkpoint(tmp_path):
    """A released-style checkpoint: the added modules beside backbone keys, split over two shards."""
    from safetensors.torch import save_file

    from omnibridge.checkpoint import load_official_weights

    torch.manual_seed(0)
    source = Aligner(tiny()).state_dict()
    names = list(source)
    shard_1 = {k: source[k] for k in names[: len(names) // 2]} | {"model.layers.0.mlp.up_proj.weight": torch.ones(2, 2)}
    shard_2 = {k: source[k] for k in names[len(names) // 2 :]} | {"lm_head.weight": torch.ones(3, 2)}
    save_file(shard_1, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file(shard_2, str(tmp_path / "model-00002-of-00002.safetensors"))
    target = Aligner(tiny())
    assert load_official_weights(target, tmp_path) == []
    for k, v in target.state_dict().items():
        assert torch.equal(v, source[k]), k
    with pytest.raises(ValueError, match="shape mismatch .* 'official' config"):
        load_official_weights(Aligner(tiny(d_model=16, d_kv=8, embed_dim=8)), tmp_path)
