"""``fastnewton.buffers.Recycler``: an array is handed out again only once nothing else refers to it."""
import copy
import pickle

import numpy as np

from fastnewton.buffers import Recycler


def test_an_array_no_longer_referenced_is_handed_out_again():
    recycler = Recycler()
    first = recycler.empty(5)
    address = first.ctypes.data
    del first
    again = recycler.empty(5)
    assert again.ctypes.data == address and again.shape == (5,) and again.dtype == np.float64


def test_an_array_still_referenced_directly_or_through_a_view_is_not_handed_out():
    recycler = Recycler()
    held = recycler.empty((4, 3))
    view = recycler.empty((4, 3))[:, 1:]
    other = recycler.empty((4, 3))
    assert len({held.ctypes.data, view.base.ctypes.data, other.ctypes.data}) == 3
    held[:] = 1.0
    view[:] = 2.0
    del other
    recycler.empty((4, 3))[:] = 7.0
    assert np.all(held == 1.0) and np.all(view == 2.0)


def test_shapes_are_kept_apart_and_integers_of_any_kind_are_shapes():
    recycler = Recycler()
    vector = recycler.empty(np.int64(6))
    assert vector.shape == (6,)
    del vector
    assert recycler.empty((6, 1)).shape == (6, 1)
    assert recycler.empty(6).shape == (6,)


def test_a_copy_or_a_pickle_holds_no_arrays():
    recycler = Recycler()
    recycler.empty(3)
    for other in (copy.copy(recycler), copy.deepcopy(recycler), pickle.loads(pickle.dumps(recycler))):
        assert isinstance(other, Recycler) and other._arrays == {}


def test_an_evaluation_released_after_its_hessian_gives_its_columns_to_the_next():
    from fastnewton import Problem, make_problem

    made = make_problem(3000, 5, nnz_per_row=3, seed=1)
    problem = Problem(made.C, made.b)
    ev = problem.evaluate(np.zeros(5))
    problem.hessian_matrix(ev)
    address = ev.kept["Q"].ctypes.data
    problem.release_curvature(ev)
    assert ev.beta is None and "Q" not in ev.kept and "u" in ev.kept
    following = problem.evaluate(np.full(5, 0.1))
    assert following.kept["Q"].ctypes.data == address
    assert np.array_equal(following.grad, Problem(made.C, made.b).grad(np.full(5, 0.1)))


def test_a_cg_steps_release_keeps_beta_and_gives_its_columns_to_the_next():
    # solve_many releases Q of every problem once its system is built; a CG step (lagged, pcg) still reads β.
    from fastnewton import Problem, make_problem

    made = make_problem(3000, 5, nnz_per_row=3, seed=1)
    problem = Problem(made.C, made.b)
    ev = problem.evaluate(np.zeros(5))
    address = ev.kept["Q"].ctypes.data
    beta = problem.row_model.curvature(problem.block, ev.kept, ev.known).copy()
    problem.release_curvature(ev, keep_beta=True)
    assert "Q" not in ev.kept and np.array_equal(ev.beta, beta)
    assert problem.evaluate(np.full(5, 0.1)).kept["Q"].ctypes.data == address


def test_of_many_arrays_a_free_one_anywhere_is_found_and_no_held_one_handed_out():
    # The search starts past the last array handed out (``Recycler.empty``) and wraps around.
    recycler = Recycler()
    held = [recycler.empty(3) for _ in range(20)]
    addresses = [array.ctypes.data for array in held]
    for position in (15, 2, 19, 0):
        released = held[position]
        held[position] = None
        del released
        again = recycler.empty(3)
        assert again.ctypes.data == addresses[position]
        held[position] = again
    fresh = recycler.empty(3)
    assert fresh.ctypes.data not in addresses and len(recycler._arrays[(3,)]) == 21
