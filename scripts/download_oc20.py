"""Download OC20 splits from fairchem's download location and lay them out as LMDBs for geognn.

    python scripts/download_oc20.py --out data/oc20 --split is2re --subset 10k/train --subset all/val_id
    python scripts/download_oc20.py --out data/oc20 --split s2ef_train_200K --split s2ef_val_id

IS2RE is fairchem's precomputed LMDBs (``OUT/is2re/<subset>/<split>/data.lmdb``). S2EF train/val
are extxyz trajectories, not LMDBs: they are converted with geognn's LMDB writer into
``OUT/s2ef/<split>/``. MD5s are checked, partial downloads resume, and the ``geognn train``
line is printed. All logic lives in ``geognn.datasets.download`` (``download_oc20``,
``oc20_main``); ``--help`` lists the splits and options.
"""

import sys

from geognn.datasets.download import oc20_main

if __name__ == "__main__":
    sys.exit(oc20_main())
