"""Passkey retrieval: prompt construction on a real tokenizer, and the scoring checked against a
model that really retrieves (an induction copy) and one that cannot (random weights)."""
from types import SimpleNamespace

import pytest
import torch

from conftest import REPO
from data.tokenizer import Encoder, train_sentencepiece
from training.model import HybridMoDEConfig, HybridMoDEForCausalLM
from training.passkey import FILLER_SENTENCES, NEEDLE, QUESTION, build_passkey_prompt, format_passkey, passkey_accuracy

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DEPTHS = [0.0, 0.25, 0.5, 0.75, 1.0]


@pytest.fixture(scope="module")
def encoder(shared_data, tmp_path_factory) -> Encoder:
    lines = (shared_data / "wikitext2" / "valid.txt").read_text().split("\n")
    return Encoder(train_sentencepiece(lines, tmp_path_factory.mktemp("spm"), 2000))


def token_count(encoder: Encoder, text: str) -> int:
    return len(encoder.encode([text])[0])


def find(haystack: list[int], needle: list[int]) -> int:
    return next(i for i in range(len(haystack) - len(needle) + 1) if haystack[i:i + len(needle)] == needle)


class InductionOracle(torch.nn.Module):
    """Predicts, at each position, the token that followed the earlier position whose preceding
    tokens match the current ones for longest (ties: the most recent); no match: uniform.
    A one-token match is not enough here: the prompt ends with "is", and "is" follows "grass"
    in the filler long before it follows "The pass key"."""

    def __init__(self, vocab_size: int, max_match: int = 32):
        super().__init__()
        self.vocab_size, self.max_match = vocab_size, max_match

    def forward(self, input_ids: torch.Tensor, use_cache: bool = False):
        b, T = input_ids.shape
        same = input_ids[:, :, None] == input_ids[:, None, :]  # (b, query i, earlier j)
        alive = same & torch.ones(T, T, dtype=torch.bool).tril(-1)
        match = alive.to(torch.int32)
        for k in range(1, self.max_match):
            shifted = torch.zeros_like(same)
            shifted[:, k:, k:] = same[:, :-k, :-k]
            alive = alive & shifted
            match += alive
        score = torch.where(match > 0, match * T + torch.arange(T), -1)
        best = score.argmax(dim=-1)
        predicted = input_ids.gather(1, best + 1)  # best < i, so best + 1 <= i is in the sequence
        logits = torch.full((b, T, self.vocab_size), -1e9).scatter_(-1, predicted[..., None], 0.0)
        logits[score.max(dim=-1).values < 0] = 0.0
        return SimpleNamespace(logits=logits)


def random_model(vocab_size: int) -> HybridMoDEForCausalLM:
    torch.manual_seed(0)
    config = HybridMoDEConfig.from_yaml(REPO / "configs" / "model" / "tiny.yaml", vocab_size=vocab_size)
    return HybridMoDEForCausalLM(config)


def test_prompt_length_is_at_most_and_close_to_the_budget(encoder):
    longest_sentence = max(token_count(encoder, s) for s in FILLER_SENTENCES)
    for length in (60, 257, 512, 1000):
        for depth in DEPTHS:
            prompt, answer = build_passkey_prompt(encoder.encode, length, depth, seed=length)
            assert length - longest_sentence < len(prompt) <= length, (length, depth, len(prompt))
            assert len(answer) == token_count(encoder, " 12345")
    with pytest.raises(ValueError, match="too short"):
        build_passkey_prompt(encoder.encode, 20, 0.5, seed=0)
    with pytest.raises(ValueError, match="depth"):
        build_passkey_prompt(encoder.encode, 200, 1.5, seed=0)


def test_pieces_concatenate_to_the_tokenization_of_the_whole_text(encoder):
    prompt, answer = build_passkey_prompt(encoder.encode, 300, 0.4, key="40721")
    text = encoder.decode(prompt + answer)
    assert encoder.encode([text])[0] == prompt + answer
    assert text.endswith(QUESTION + " 40721") and NEEDLE.format(key="40721") in text


def test_key_sits_at_the_requested_depth(encoder):
    key = "83019"
    key_ids = encoder.encode([f" {key}"])[0]
    around_filler = token_count(encoder, NEEDLE.format(key=key)) + token_count(encoder, QUESTION)
    for length in (512, 2048):
        tolerance = (around_filler + max(token_count(encoder, s) for s in FILLER_SENTENCES)) / length
        positions = []
        for depth in DEPTHS:
            prompt, answer = build_passkey_prompt(encoder.encode, length, depth, key=key)
            assert answer == key_ids
            positions.append(find(prompt, key_ids))
            assert abs(positions[-1] / length - depth) <= tolerance, (length, depth, positions[-1])
        assert positions == sorted(positions) and len(set(positions)) == len(positions)


def test_seeds_draw_different_keys_and_a_seed_repeats(encoder):
    answers = [tuple(build_passkey_prompt(encoder.encode, 128, 0.5, seed=s)[1]) for s in range(6)]
    assert len(set(answers)) == len(answers)
    same_seed = [build_passkey_prompt(encoder.encode, 128, 0.5, seed=3) for _ in range(2)]
    assert same_seed[0] == same_seed[1]
    digits = encoder.decode(list(answers[0])).strip()
    assert len(digits) == 5 and digits.isdigit()


def test_a_retrieving_model_scores_one_everywhere(encoder):
    result = passkey_accuracy(InductionOracle(encoder.vocab_size), encoder.encode, [256, 1024], DEPTHS, trials=3,
                              seed=1, batch_size=4)
    assert set(result["lengths"]) == {256, 1024}
    for length, per_length in result["lengths"].items():
        assert per_length["depths"] == {depth: 1.0 for depth in DEPTHS}
        assert per_length["accuracy"] == 1.0 and per_length["answer_logprob"] == pytest.approx(0.0, abs=1e-6)
        assert length - 10 < per_length["prompt_tokens"] <= length
    assert result["accuracy"] == 1.0
    summary = format_passkey(result)
    assert "1024" in summary and "d=0.75" in summary and "accuracy 1.00" in summary


def test_a_model_that_only_repeats_the_current_token_scores_zero(encoder):
    class Repeater(torch.nn.Module):
        def forward(self, input_ids, use_cache=False):
            return SimpleNamespace(logits=torch.nn.functional.one_hot(input_ids, encoder.vocab_size).float() * 50)

    result = passkey_accuracy(Repeater(), encoder.encode, [128], [0.5], trials=4)
    assert result["accuracy"] == 0.0 and result["lengths"][128]["answer_logprob"] < -50


def test_a_random_model_fails_and_its_mode_is_restored(encoder):
    model = random_model(encoder.vocab_size).train()
    result = passkey_accuracy(model, encoder.encode, [128, 512], [0.0, 0.5, 1.0], trials=2, batch_size=8)
    assert model.training
    assert result["accuracy"] < 0.5
    for per_length in result["lengths"].values():
        assert per_length["accuracy"] < 0.5
        # six answer tokens from about uniform over 2000: near 6 * log(1/2000) = -45.6
        assert -200 < per_length["answer_logprob"] < -10
    one_at_a_time = passkey_accuracy(model.eval(), encoder.encode, [128, 512], [0.0, 0.5, 1.0], trials=2, batch_size=1)
    assert not model.training
    for length in (128, 512):
        assert one_at_a_time["lengths"][length]["answer_logprob"] == pytest.approx(
            result["lengths"][length]["answer_logprob"], rel=1e-4)
