"""Point-pattern data read from where a system package installed them (none is shipped with fastsamp).

``finpines``: the Finnish pines of spatstat (126 saplings in the window [−5, 5] × [−8, 2] metres;
Penttinen, Stoyan and Henttonen 1992), the point pattern of the LGCP benchmark target
(:class:`fastsamp.targets.LGCP`). It is GPL ≥ 2 data of the R package spatstat.data, read from that
package's ``rawdata/finpines/finpines.txt`` (the text the R data set is made from: its x, y equal the
data set's ``finpines$x``, ``finpines$y``), so no R and no reader of R's formats is needed. Get it with
Debian's ``apt-get install r-cran-spatstat.data``, or without R:

    apt-get download r-cran-spatstat.data && dpkg-deb -x r-cran-spatstat.data_*.deb DIR
    export FASTSAMP_SPATSTAT_DATA=DIR/usr/lib/R/site-library/spatstat.data

(``bash .ci/run`` extracts it into ``.venv/lib/R/site-library``, where it is found without the variable.)
"""
from __future__ import annotations

import os
import sys

import numpy as np

__all__ = ["FINPINES_WINDOW", "SPATSTAT_DATA_ENV", "spatstat_data_dirs", "finpines_path", "finpines_points"]

SPATSTAT_DATA_ENV = "FASTSAMP_SPATSTAT_DATA"
FINPINES_WINDOW = ((-5.0, 5.0), (-8.0, 2.0))  # spatstat's finpines$window, metres
_FINPINES_FILE = os.path.join("rawdata", "finpines", "finpines.txt")


def spatstat_data_dirs() -> list[str]:
    """Where the spatstat.data package directory is looked for, in order: ``$FASTSAMP_SPATSTAT_DATA``,
    this Python environment's ``lib/R/site-library`` (where ``.ci/run`` extracts the Debian package),
    then the R libraries of an installed r-cran-spatstat.data."""
    env = os.environ.get(SPATSTAT_DATA_ENV)
    libraries = [os.path.join(sys.prefix, "lib", "R", "site-library"), "/usr/lib/R/site-library",
                 "/usr/local/lib/R/site-library", "/usr/lib/R/library"]
    return ([env] if env else []) + [os.path.join(lib, "spatstat.data") for lib in libraries]


def finpines_path() -> str | None:
    """The path of spatstat.data's finpines.txt, or None where it is not installed. A set
    ``$FASTSAMP_SPATSTAT_DATA`` without the file raises FileNotFoundError (an explicit choice that points
    nowhere is not passed over for the system directories)."""
    env = os.environ.get(SPATSTAT_DATA_ENV)
    if env and not os.path.isfile(os.path.join(env, _FINPINES_FILE)):
        raise FileNotFoundError(f"{SPATSTAT_DATA_ENV}={env} holds no {_FINPINES_FILE}: set it to the spatstat.data "
                                "package directory (DIR/usr/lib/R/site-library/spatstat.data) or unset it")
    for d in spatstat_data_dirs():
        path = os.path.join(d, _FINPINES_FILE)
        if os.path.isfile(path):
            return path
    return None


def finpines_points(unit_square: bool = True) -> np.ndarray:
    """The Finnish pines, a (126, 2) float64 array of (x, y) in metres, or with ``unit_square`` the
    window mapped onto [0, 1]²: ((x + 5) / 10, (y + 8) / 10), as in the csv of the LGCP benchmark's
    code (Heng et al. 2020; Annealed Flow Transport; gfn-diffusion's df_pines.csv).

    Raises FileNotFoundError naming what to install where the data is absent."""
    path = finpines_path()
    if path is None:
        raise FileNotFoundError(
            "the Finnish pines data (spatstat.data's rawdata/finpines/finpines.txt; GPL, not shipped with "
            f"fastsamp) is not in any of {spatstat_data_dirs()}: install it with `apt-get install "
            "r-cran-spatstat.data`, or without R `apt-get download r-cran-spatstat.data && dpkg-deb -x "
            f"r-cran-spatstat.data_*.deb DIR` and set {SPATSTAT_DATA_ENV}=DIR/usr/lib/R/site-library/spatstat.data")
    xy = np.loadtxt(path, skiprows=1, usecols=(0, 1), dtype=np.float64, ndmin=2)  # columns x y diameter height
    (x0, x1), (y0, y1) = FINPINES_WINDOW
    if not ((xy[:, 0] >= x0) & (xy[:, 0] <= x1) & (xy[:, 1] >= y0) & (xy[:, 1] <= y1)).all():
        raise ValueError(f"{path} does not hold points (x, y) in the finpines window {FINPINES_WINDOW}")
    if not unit_square:
        return xy
    return (xy - np.array([x0, y0])) / np.array([x1 - x0, y1 - y0])
