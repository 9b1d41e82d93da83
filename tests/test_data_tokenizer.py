import pytest

from mpt_ext.data.tokenizer import ByteTokenizer, load_tokenizer


def test_byte_round_trip_ascii_and_non_ascii():
    tok = ByteTokenizer()
    for text in ["", "a", "hello world\n", "naïve café — 東京 🚀", "\x00\tnul and tab", "ß" * 17]:
        ids = tok.encode(text)
        assert all(0 <= i < 256 for i in ids)
        assert len(ids) == len(text.encode("utf-8"))
        assert tok.decode(ids) == text


def test_byte_specials_decode_to_nothing_and_ids_are_distinct():
    tok = ByteTokenizer()
    specials = {tok.bos_token_id, tok.eos_token_id, tok.pad_token_id}
    assert len(specials) == 3 and all(256 <= s < tok.vocab_size for s in specials)
    assert tok.decode([tok.bos_token_id, *tok.encode("ok"), tok.eos_token_id, tok.pad_token_id]) == "ok"


def test_byte_decode_invalid_utf8_is_replaced_not_raised():
    tok = ByteTokenizer()
    half_char = tok.encode("é")[:1]
    assert tok.decode(half_char + tok.encode("x")) == "\ufffdx"


def test_byte_bad_input_raises_clearly():
    tok = ByteTokenizer()
    with pytest.raises(TypeError, match="text must be str"):
        tok.encode(b"bytes")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([tok.vocab_size])


def test_load_tokenizer_byte_and_missing_dir(tmp_path):
    assert isinstance(load_tokenizer("byte"), ByteTokenizer)
    assert isinstance(load_tokenizer(None), ByteTokenizer)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        load_tokenizer(tmp_path / "nope")


def test_hf_tokenizer_dir_round_trip(tmp_path):
    """A local HF tokenizer dir (built offline here: a word-level vocab) loads through
    transformers and round-trips ids."""
    pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "<eos>": 1, "hello": 2, "world": 3}
    core = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    core.decoder = tokenizers.decoders.WordPiece()  # joins words with spaces
    PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<eos>", unk_token="[UNK]").save_pretrained(tmp_path)
    tok = load_tokenizer(tmp_path)
    assert tok.vocab_size == 4 and tok.eos_token_id == 1
    assert tok.encode("hello world") == [2, 3]
    assert tok.decode([2, 1, 3]) == "hello world"
    assert len(tok.fingerprint) == 16 and tok.fingerprint != ByteTokenizer().fingerprint
