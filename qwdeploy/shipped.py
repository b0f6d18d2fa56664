"""The files qwdeploy ships inside its package: data/ and the profiles.

Found through the import system's own record of where a package lives (an editable install maps
`qwdeploy._profiles` to profiles/), without importlib.resources, whose imports alone cost `plan`
13 ms."""

from importlib.util import find_spec
from pathlib import Path


def package_dir(package: str) -> Path:
    """The folder of a package of qwdeploy's."""
    spec = find_spec(package)
    locations = list(spec.submodule_search_locations or ()) if spec else []
    if not locations:
        raise FileNotFoundError(f"{package} is not an installed package folder")
    return Path(locations[0])


def data_file(*parts: str) -> Path:
    """A file under qwdeploy/data."""
    return package_dir("qwdeploy").joinpath("data", *parts)


def profiles_dir() -> Path:
    """The shipped profiles (profiles/ in the repository)."""
    return package_dir("qwdeploy._profiles")
