"""Maps the top-level folders onto the ``ckrv.*`` import namespace.

pyproject.toml holds the metadata; this only lists the packages, because
setuptools' automatic discovery cannot rename folders into a namespace.
"""

from setuptools import find_packages, setup

PARTS = ("cli", "events", "schemas", "services")

package_dir = {f"ckrv.{part}": part for part in PARTS}
packages = [
    f"ckrv.{part}{'.' + sub if sub else ''}" for part in PARTS for sub in ["", *find_packages(part)]
]

setup(package_dir=package_dir, packages=packages)
