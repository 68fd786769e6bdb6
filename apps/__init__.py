"""Streamlit inference apps for the domain pipelines."""
