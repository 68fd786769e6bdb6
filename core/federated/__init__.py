"""Federated PEFT: sites train adapters locally and share only adapter updates (docs/federated.md).

Modules: ``aggregate`` (FedAvg of dense, sparse and layer-wise tensors; LoRA ``exact``, ``naive``,
``ffa``, ``fedsa``; FedBN), ``tensors`` (an adapter as tensors, loaded back into a live model,
packed as safetensors bytes), ``client`` (:class:`SiteClient`: the client step on ``fit``),
``server`` (:class:`Coordinator`: quorum, DP noise, state saved each round), ``privacy``
(client-level DP, Opacus' RDP accountant), ``simulate`` (in-process rounds), ``sites`` (a site of
any pipeline), ``flower`` (deployment on Flower over gRPC) and ``cli`` (``scalpel federated``).
"""
