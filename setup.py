"""Maps the fixed top-level folders onto one import root, `internvl_serve`.

services/ -> internvl_serve, kernels/ -> internvl_serve.kernels, clients/ -> internvl_serve.clients,
proto/pb/ (the stubs generated from proto/, imported by services and clients alike) -> internvl_serve.pb.
There is deliberately no top-level `kernels` package: Hugging Face's `kernels` package has that name
and transformers probes for it.
"""

from setuptools import find_packages, setup

ROOTS = {
    "internvl_serve": "services",
    "internvl_serve.kernels": "kernels",
    "internvl_serve.clients": "clients",
    "internvl_serve.pb": "proto/pb",
}


def _packages() -> list[str]:
    names = []
    for name, folder in ROOTS.items():
        names.append(name)
        names += [f"{name}.{sub}" for sub in find_packages(folder)]
    return names


setup(packages=_packages(), package_dir=ROOTS)
