"""The multipage Scalpel app (``scalpel app`` / ``make app``): NLP, vision and medical pages.

Each page is also a standalone app (``scalpel app nlp``); here ``st.navigation`` runs the
chosen page file, so the pages share the sidebar's runs directory.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

HERE = Path(__file__).resolve().parent
PAGES = {"nlp": ("NLP: sentiment and chat", ":material/chat:"), "vision": ("Vision: detection and segmentation", ":material/image:"),
         "medical": ("Medical imaging (DICOM)", ":material/radiology:")}


def main() -> None:
    st.set_page_config(page_title="Scalpel", layout="wide")
    pages = [st.Page(str(HERE / f"{name}_page.py"), title=title, icon=icon, url_path=name, default=i == 0)
             for i, (name, (title, icon)) in enumerate(PAGES.items())]
    st.navigation(pages).run()


main()
