"""Many independent small problems: the whole Newton loop runs in compiled code, in parallel across problems."""


def solve_problems(problems, model="softmax", **kwargs):
    raise NotImplementedError("solve_many(problems): not built yet")
