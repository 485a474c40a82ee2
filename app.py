"""The Gradio UI: ``python app.py [--host 127.0.0.1] [--port 7860] [--auth user:pass] [--db results.db]``.

Everything lives in ``evalkit.ui`` (one module per tab); ``python app.py --help`` lists the options.
"""

import evalkit  # noqa: F401  (offline defaults before gradio and the hub libraries are imported)
from evalkit.ui import main

if __name__ == "__main__":
    raise SystemExit(main())
