import pytest
import torch

pytest.register_assert_rewrite("tests.helpers")  # its assertion helpers report like the tests' own asserts

from tests.helpers import FAMILIES, make_model  # noqa: E402, F401 (re-exported: tests/helpers.py is their home)

torch.set_num_threads(2)


@pytest.fixture(params=sorted(FAMILIES))
def family(request):
    return request.param
