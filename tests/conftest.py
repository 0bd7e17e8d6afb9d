import pytest
import torch

from nemo_peft.models.gpt import GPTConfig, GPTModel

torch.set_num_threads(2)

FAMILIES = {
    # Llama-style: RoPE, RMSNorm, SwiGLU, GQA, tied embeddings
    "llama": dict(vocab_size=97, hidden_size=48, num_layers=3, num_attention_heads=6, num_query_groups=2,
                  ffn_hidden_size=80),
    # GPT-2 style: learned positions, LayerNorm, GELU (tanh), biases, tied
    "gpt2": dict(vocab_size=97, hidden_size=48, num_layers=3, num_attention_heads=4, ffn_hidden_size=96,
                 position_embedding_type="learned_absolute", normalization="LayerNorm",
                 activation="gelu_tanh", gated_linear_unit=False, add_bias_linear=True, add_qkv_bias=True,
                 max_position_embeddings=64),
    # Qwen2 style: QKV bias only, untied output layer
    "qwen2": dict(vocab_size=97, hidden_size=48, num_layers=2, num_attention_heads=4, num_query_groups=2,
                  ffn_hidden_size=64, add_qkv_bias=True, share_embeddings_and_output_weights=False),
}


def make_model(family="llama", seed=0, **overrides) -> GPTModel:
    torch.manual_seed(seed)
    model = GPTModel(GPTConfig(**{**FAMILIES[family], **overrides}))
    return model.eval()


@pytest.fixture(params=sorted(FAMILIES))
def family(request):
    return request.param
