"""The Streamlit app (built in the UI issue)."""
