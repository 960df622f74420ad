"""The routers' burstiness on its way to the planner: combined over a service's routers,
published only when it moves, carried by the report view into the loop's `DemandView`, and
from there into the planner's `ServiceSpec` (capacity from the batching model)."""

from __future__ import annotations

from accordion.operator.api import CapacityModelName
from accordion.operator.control.burstiness import BurstinessBook, combine, with_burstiness
from accordion.operator.control.loop import ControlLoop, DemandView, World
from accordion.operator.reports import RouterDemand, ServiceRouting
from accordion.solver import Burstiness

from .test_loop import Clock, pool, service
from .test_reports import SVC, report, svc


def test_routers_combine_into_the_service_and_noise_is_poisson() -> None:
    both = combine([(3.0, 50.0), (2.0, 50.0)])
    assert both == Burstiness(dispersion=4.0, window_s=0.1, rate_qps=100.0)
    # Within counting noise of 1 (0.17 at 600 bins): Poisson.
    calm = combine([(1.05, 80.0), (0.97, 20.0)])
    assert calm is not None
    assert calm.dispersion == 1.0
    assert calm.rate_cv2 == 0.0
    assert combine([]) is None
    assert combine([(2.0, 0.0)]) is None


def test_a_burstiness_is_published_again_only_when_it_moved() -> None:
    book = BurstinessBook()
    first = Burstiness(dispersion=3.0, rate_qps=100.0)  # cv2 0.2
    assert book.observe(SVC, first)
    assert not book.observe(SVC, Burstiness(dispersion=3.3, rate_qps=100.0))  # +15%
    assert book.published[SVC] == first
    assert book.observe(SVC, Burstiness(dispersion=5.0, rate_qps=100.0))  # 2x
    assert not book.observe(SVC, None)
    assert book.published[SVC].dispersion == 5.0


def test_reports_carry_the_burstiness_into_the_demand_view() -> None:
    clock = Clock()
    demand = RouterDemand(lambda k: ServiceRouting(None, None), clock)
    services = {SVC: svc()}
    clock.t += 1.0
    # An older router reports no dispersion: nothing is published.
    demand.answer(report("r1", 50, 50))
    demand.fold(services)
    assert SVC not in demand.view(services, DemandView()).burstiness
    clock.t += 1.0
    demand.answer(report("r1", 50, 100, arrival_dispersion=3.0, dispersion_rate_qps=50.0))
    demand.answer(report("r2", 50, 50, arrival_dispersion=1.0, dispersion_rate_qps=50.0))
    assert demand.fold(services)
    view = demand.view(services, DemandView())
    assert view.burstiness[SVC] == Burstiness(dispersion=3.0, rate_qps=100.0)


def test_the_loop_plans_capacity_from_the_model_when_burstiness_is_known() -> None:
    batches = [{"batchSize": b, "p50Ms": 4 + 2 * b, "p99Ms": 5 + 2.5 * b} for b in (1, 2, 4, 8)]
    variants = [
        {
            "name": "big",
            "accuracy": 80,
            "model": {"storageUri": "/models/big.pt"},
            "profiles": [{"pool": "gpu", "batches": batches}],
        }
    ]
    isvc = service(qps=100.0, variants=variants)
    isvc.spec.demand.capacity_model = CapacityModelName.BATCHING
    world = World(services={"default/svc": isvc}, pools={"gpu": pool(devices=8)})

    def capacity(burstiness: dict[str, Burstiness]) -> float:
        loop = ControlLoop(clock=Clock())
        plan, _, _ = loop.make_plan(world, DemandView(burstiness=burstiness))
        (row,) = [r for r in plan.rows if r.replicas > 0]
        return row.capacity_qps_per_replica

    margin = capacity({})
    poisson = capacity({"default/svc": Burstiness(dispersion=1.0, rate_qps=100.0)})
    bursty = capacity({"default/svc": Burstiness(dispersion=4.0, rate_qps=100.0)})
    assert poisson > 1.1 * margin  # smooth traffic: more per replica than the fixed margin
    assert bursty < 0.8 * poisson  # bursty traffic: less
    # The burstiness reaches the planner's ServiceSpec as published.
    published = {"default/svc": Burstiness(dispersion=4.0, rate_qps=100.0)}
    loop = ControlLoop(clock=Clock())
    problem = loop._build(world, {}, DemandView(burstiness=published)).problem
    assert problem.services[0].burstiness == published["default/svc"]
    assert with_burstiness(problem, {}) is problem
    # The API's default (Margin): the measured burstiness does not change the capacity.
    isvc.spec.demand.capacity_model = CapacityModelName.MARGIN
    assert capacity({"default/svc": Burstiness(dispersion=4.0, rate_qps=100.0)}) == margin
    assert (
        loop._build(world, {}, DemandView(burstiness=published)).problem.services[0].burstiness
        is None
    )
