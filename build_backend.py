"""PEP 517 backend: setuptools, building against the torch already installed in the target environment.

pip's build isolation hides the target environment's packages, and listing torch as a build requirement
would download a second copy of torch (a different build, possibly a 5 GB CUDA one) to compile against,
giving an extension that crashes or refuses to load beside the torch that runs it. Instead this backend
puts the target environment's own site-packages back on the path, so `import torch` in setup.py finds the
torch that will run the extension. With `--no-build-isolation` it changes nothing.
"""
import sys
import sysconfig

from setuptools import build_meta as _setuptools

for _key in ("purelib", "platlib"):
    _path = sysconfig.get_paths()[_key]
    if _path not in sys.path:
        sys.path.append(_path)

get_requires_for_build_wheel = _setuptools.get_requires_for_build_wheel
get_requires_for_build_editable = _setuptools.get_requires_for_build_editable
get_requires_for_build_sdist = _setuptools.get_requires_for_build_sdist
prepare_metadata_for_build_wheel = _setuptools.prepare_metadata_for_build_wheel
prepare_metadata_for_build_editable = _setuptools.prepare_metadata_for_build_editable
build_wheel = _setuptools.build_wheel
build_editable = _setuptools.build_editable
build_sdist = _setuptools.build_sdist
