"""The Flax ensemble: K members of one small network, vmapped over a leading member axis.

A member maps a prompt's bag of hashed n-grams (+ dense features) to a Gaussian over the
normalised log output length (mean, log std) and bucket logits. The ensemble's parameters
are the members' parameters stacked on axis 0; `ensemble_init`/`ensemble_apply` vmap the
member's init/apply over that axis, so the K members train in one jitted step.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from llmserve.predictor.features import Batch

# A Batch passes through jit as its arrays (features.py stays free of jax); `enc` is None
# (an empty subtree) without a sentence encoder.
jax.tree_util.register_pytree_node(
    Batch, lambda b: ((b.ids, b.segments, b.weights, b.dense, b.enc), None),
    lambda _, xs: Batch(*xs))


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    table_size: int = 2**16
    embed_dim: int = 32
    hidden_dim: int = 128
    num_buckets: int = 3
    dropout: float = 0.1
    bag_dropout: float = 0.0   # share of a prompt's n-grams dropped while training
    wide: bool = False         # + a linear term per n-gram on the served mean (wide & deep):
                               # many weak n-gram cues add up without the 16-wide bottleneck
    num_tasks: int = 1         # mean/std heads: task 0 = the served lengths, 1.. = auxiliary
                               # datasets (other responders) that only shape the features
    encoder_dim: int = 0       # > 0: a sentence embedding of this width is an input too,
    encoder_proj: int = 32     # ... through a learned projection to this width + LayerNorm
    encoder_dropout: float = 0.0  # ... with dropout on the projection while training

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if not self.encoder_dim:  # checkpoints without an encoder keep their old meta
            for k in ("encoder_dim", "encoder_proj", "encoder_dropout"):
                del d[k]
        return d


class Member(nn.Module):
    spec: ModelSpec

    @nn.compact
    def __call__(self, ids, segments, weights, dense, train: bool = False,
                 all_tasks: bool = False, enc=None):
        s = self.spec
        if train and s.bag_dropout > 0:
            # n-gram dropout: a member cannot lean on the few n-grams that identify a
            # training prompt (memorising it), so it learns from the many shared ones
            keep = jax.random.bernoulli(self.make_rng("dropout"), 1 - s.bag_dropout,
                                        weights.shape)
            weights = weights * keep
        emb = nn.Embed(s.table_size, s.embed_dim,
                       embedding_init=nn.initializers.normal(stddev=0.1), name="bag")(ids)
        bag = jax.ops.segment_sum(emb * weights[:, None], segments,
                                  num_segments=dense.shape[0])
        x = jnp.concatenate([nn.LayerNorm(name="bag_norm")(bag), dense], axis=-1)
        if s.encoder_dim:
            if enc is None or enc.shape[-1] != s.encoder_dim:
                raise ValueError(f"the model takes {s.encoder_dim}-wide sentence embeddings "
                                 f"(batch.enc), got {None if enc is None else enc.shape}")
            # a few learned directions of the pretrained embedding, at the bag's scale
            e = nn.LayerNorm(name="enc_norm")(nn.Dense(s.encoder_proj, name="enc_proj")(enc))
            e = nn.Dropout(s.encoder_dropout, deterministic=not train)(e)
            x = jnp.concatenate([x, e], axis=-1)
        for i in range(2):
            x = nn.gelu(nn.Dense(s.hidden_dim, name=f"hidden{i}")(x))
            x = nn.Dropout(s.dropout, deterministic=not train)(x)
        mu = nn.Dense(s.num_tasks, name="mean")(x)
        if s.wide:
            lin = nn.Embed(s.table_size, 1, embedding_init=nn.initializers.zeros,
                           name="wide")(ids)[:, 0]
            mu = mu.at[:, 0].add(jax.ops.segment_sum(lin * weights, segments,
                                                     num_segments=dense.shape[0]))
        # Softplus keeps the std positive and away from the NLL's degenerate 0.
        sigma = nn.softplus(nn.Dense(s.num_tasks, name="std")(x)) + 1e-3
        logits = nn.Dense(s.num_buckets, name="buckets")(x)
        if all_tasks:
            return mu, sigma, logits         # [B, T], [B, T], [B, C]
        return mu[:, 0], sigma[:, 0], logits


def ensemble_init(spec: ModelSpec, key, num_members: int):
    """Params with a leading [K] axis; member k initialised from fold_in(key, k)."""
    member = Member(spec)
    dummy = (jnp.zeros(4, jnp.int32), jnp.zeros(4, jnp.int32), jnp.zeros(4, jnp.float32),
             jnp.zeros((1, 2), jnp.float32))
    enc = jnp.zeros((1, spec.encoder_dim), jnp.float32) if spec.encoder_dim else None
    keys = jax.vmap(lambda k: jax.random.fold_in(key, k))(jnp.arange(num_members))
    return jax.vmap(lambda k: member.init(k, *dummy, enc=enc)["params"])(keys)


def ensemble_apply(spec: ModelSpec, params, batch, train: bool = False, dropout_key=None,
                   all_tasks: bool = False):
    """-> (mu [K,B], sigma [K,B], logits [K,B,C]): every member on the same batch (with
    all_tasks, mu and sigma are [K,B,T])."""
    member = Member(spec)
    ids, seg, w, dense = (jnp.asarray(batch.ids), jnp.asarray(batch.segments),
                          jnp.asarray(batch.weights), jnp.asarray(batch.dense))
    enc = None if batch.enc is None else jnp.asarray(batch.enc)
    k = jax.tree_util.tree_leaves(params)[0].shape[0]
    if train:
        keys = jax.random.split(dropout_key, k)
        return jax.vmap(lambda p, r: member.apply({"params": p}, ids, seg, w, dense, True,
                                                  all_tasks, enc, rngs={"dropout": r})
                        )(params, keys)
    return jax.vmap(lambda p: member.apply({"params": p}, ids, seg, w, dense, False,
                                           all_tasks, enc))(params)


def member_apply(spec: ModelSpec, member_params, batch):
    """One member, no vmap (the independent check of ensemble_apply)."""
    return Member(spec).apply({"params": member_params}, jnp.asarray(batch.ids),
                              jnp.asarray(batch.segments), jnp.asarray(batch.weights),
                              jnp.asarray(batch.dense),
                              enc=None if batch.enc is None else jnp.asarray(batch.enc))


def num_params(params) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(params)))


def serving_params(params):
    """The ensemble's params laid out for serving_apply: the K embedding tables side by side
    ([T, K*E]) so one gather fetches every member's row of an n-gram."""
    emb = params["bag"]["embedding"]                                        # [K, T, E]
    k, t, e = emb.shape
    out = {n: v for n, v in params.items() if n not in ("bag", "wide")}
    table = jnp.transpose(emb, (1, 0, 2)).reshape(t, k * e)
    if "wide" in params:  # the wide weights ride in the same gather: columns K*E..K*E+K
        table = jnp.concatenate([table, params["wide"]["embedding"][..., 0].T], 1)
    out["bag_table"] = table
    return jax.device_put(out)


@jax.jit
def serving_apply(sparams, batch):
    """ensemble_apply (eval mode) written for latency: one gather of [N, K*E] rows and one
    sorted segment sum for all members, then the members' small MLPs as batched einsums.
    -> (mu [K,B], sigma [K,B], probs [K,B,C])."""
    table = sparams["bag_table"]
    k, e = sparams["bag_norm"]["scale"].shape
    b = batch.dense.shape[0]
    rows = table[batch.ids] * batch.weights[:, None]
    summed = jax.ops.segment_sum(rows, batch.segments, num_segments=b, indices_are_sorted=True)
    bag = jnp.transpose(summed[:, :k * e].reshape(b, k, e), (1, 0, 2))       # [K, B, E]

    def norm(name, x):  # flax LayerNorm (eps 1e-6) over the last axis, per member
        mean = x.mean(-1, keepdims=True)
        var = jnp.square(x - mean).mean(-1, keepdims=True)
        ln = sparams[name]
        return (x - mean) * jax.lax.rsqrt(var + 1e-6) * ln["scale"][:, None] + ln["bias"][:, None]

    def dense(name, x):
        return jnp.einsum("kbi,kio->kbo", x, sparams[name]["kernel"]) + \
            sparams[name]["bias"][:, None]
    x = jnp.concatenate([norm("bag_norm", bag),
                         jnp.broadcast_to(batch.dense, (k,) + batch.dense.shape)], -1)
    if "enc_proj" in sparams:
        proj = jnp.einsum("bd,kdo->kbo", batch.enc, sparams["enc_proj"]["kernel"]) + \
            sparams["enc_proj"]["bias"][:, None]
        x = jnp.concatenate([x, norm("enc_norm", proj)], -1)
    for i in range(2):
        x = nn.gelu(dense(f"hidden{i}", x))
    mu = dense("mean", x)[..., 0]
    if table.shape[1] > k * e:
        mu = mu + summed[:, k * e:].T
    sigma = nn.softplus(dense("std", x)[..., 0]) + 1e-3
    return mu, sigma, jax.nn.softmax(dense("buckets", x), -1)
