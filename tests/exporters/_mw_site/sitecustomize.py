"""What ``traced-transport run`` puts in every process of the child command (test copy).

Only with TT_MW_DIR set; the app module then does nothing itself.
"""

import os

if os.environ.get("TT_MW_DIR"):
    from traced_transport.exporters import multiworker

    multiworker.start_worker(os.environ["TT_MW_DIR"], interval=float(os.environ.get("TT_MW_INTERVAL", "1"))).instrument(
        server_name="http"
    )
