"""Download QM9 from its figshare record into ``--out`` so that ``open_dataset("qm9", OUT)`` works.

    python scripts/download_qm9.py --out data/qm9_full
    python scripts/download_qm9.py --out DIR --mirror http://host/qm9/ --skip-checksum

Fetches ``dsgdb9nsd.xyz.tar.bz2`` (86 MB) and ``uncharacterized.txt``, verifies their SHA-256,
resumes a partial download when run again, extracts the 133,885 ``dsgdb9nsd_*.xyz`` files into
``--out`` and prints the ``geognn train`` line to use next. All logic lives in
``geognn.datasets.download`` (``download_qm9``, ``qm9_main``); ``--help`` lists the options.
"""

import sys

from geognn.datasets.download import qm9_main

if __name__ == "__main__":
    sys.exit(qm9_main())
