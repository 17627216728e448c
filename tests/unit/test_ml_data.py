"""ml/data.py: the bundled corpus, the split, shards, batch sampling, validation batches, and
the refusal of unusable text."""

import gzip

import pytest
import torch

from dist_llm_train.ml.data import BatchSampler, load_corpus, shard, split, validation_batches
from dist_llm_train.schema import ConfigError


@pytest.fixture(scope="module")
def corpus() -> bytes:
    return load_corpus(None, seq_len=128)


def test_bundled_corpus_is_the_whole_cleaned_kjv(corpus):
    assert len(corpus) == 4_153_207
    assert corpus.startswith(b"Genesis 1\n\nIn the beginning God created the heaven and the earth.\n")
    assert corpus.endswith(b"The grace of our Lord Jesus Christ be with you all. Amen.\n")


def test_a_users_text_and_gzip_file_load_as_bytes(tmp_path):
    text = "Fa\u00e7ade caf\u00e9 text, long enough.\n".encode() * 4
    plain, packed = tmp_path / "mine.txt", tmp_path / "mine.txt.gz"
    plain.write_bytes(text)
    packed.write_bytes(gzip.compress(text))

    assert load_corpus(str(plain), seq_len=8) == text
    assert load_corpus(str(packed), seq_len=8) == text


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        (b"", "0 bytes is too short"),
        (b"x" * 17, "17 bytes is too short"),
        (b"ok text \xff\xfe more", "not UTF-8 text (byte 8"),
    ],
)
def test_unusable_text_is_refused_naming_the_field_and_file(tmp_path, content, message):
    path = tmp_path / "data.txt"
    if content is not None:
        path.write_bytes(content)

    with pytest.raises(ConfigError, match="data.path: .*data.txt") as caught:
        load_corpus(str(path), seq_len=8)
    assert message in str(caught.value)


def test_a_directory_or_damaged_gzip_is_refused(tmp_path):
    (tmp_path / "bad.gz").write_bytes(b"not gzip at all")

    with pytest.raises(ConfigError, match="cannot read"):
        load_corpus(str(tmp_path), seq_len=8)
    with pytest.raises(ConfigError, match="bad.gz: cannot read"):
        load_corpus(str(tmp_path / "bad.gz"), seq_len=8)


def test_split_holds_out_the_tail():
    text = bytes(range(100))

    train, val = split(text, val_fraction=0.2, seq_len=4)

    assert train == bytes(range(80)) and val == bytes(range(80, 100))


def test_split_refuses_a_validation_part_without_a_window():
    with pytest.raises(ValueError, match=r"validation split \(data.val_fraction 0.01\): 1 bytes"):
        split(bytes(100), val_fraction=0.01, seq_len=4)


@pytest.mark.parametrize("count", [1, 3, 7])
def test_shards_are_contiguous_disjoint_and_cover_the_text(count):
    text = bytes(i % 251 for i in range(1000))

    pieces = [shard(text, i, count) for i in range(count)]

    assert b"".join(pieces) == text
    assert max(map(len, pieces)) - min(map(len, pieces)) <= 1


@pytest.mark.parametrize("index", [-1, 3])
def test_shard_refuses_an_index_outside_the_count(index):
    with pytest.raises(ValueError, match=f"shard index {index} is outside"):
        shard(bytes(10), index, 3)


def test_batches_are_next_byte_windows_of_the_text():
    text = bytes(range(200))
    sampler = BatchSampler(text, batch_size=5, seq_len=6, seed=0)

    x, y = next(sampler)

    assert x.shape == y.shape == (5, 6) and x.dtype == y.dtype == torch.int64
    # bytes(range(200)) makes every window an arithmetic run, so y = x + 1 everywhere
    assert torch.equal(y, x + 1)
    assert torch.equal(x[:, 1:], x[:, :1] + torch.arange(1, 6))


def test_batches_depend_on_the_seed_only():
    text = bytes(i % 256 for i in range(5000))

    first, again, other = (next(BatchSampler(text, 4, 16, seed)) for seed in (3, 3, 4))

    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])


def test_sampler_reaches_both_ends_of_a_small_shard_and_counts_epochs():
    text = bytes(range(10))  # windows of 4 + 1 start at 0..5
    sampler = BatchSampler(text, batch_size=64, seq_len=4, seed=1)

    x, _ = next(sampler)

    assert set(x[:, 0].tolist()) == set(range(6))
    assert sampler.epoch == pytest.approx(64 * 4 / 10)


def test_sampler_refuses_a_shard_without_a_window():
    with pytest.raises(ValueError, match="shard: 4 bytes hold no window"):
        BatchSampler(bytes(4), batch_size=2, seq_len=4, seed=0)


def test_validation_batches_are_fixed_and_span_the_validation_text():
    val = bytes(i % 256 for i in range(1000))

    first = validation_batches(val, batch_size=4, seq_len=8, count=3)
    again = validation_batches(val, batch_size=4, seq_len=8, count=3)

    assert len(first) == 3 and all(x.shape == (4, 8) for x, _ in first)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    starts = torch.cat([x[:, 0] for x, _ in first])
    assert starts[0] == 0 and starts[-1] == (1000 - 9) % 256  # the first and the last window
