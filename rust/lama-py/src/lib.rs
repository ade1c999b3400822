//! pyo3 bindings: converts types and errors, releases the GIL around real work.
use pyo3::prelude::*;

#[pymodule(gil_used = false)]
fn _lama(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("CORE_NAME", "rust")?;
    Ok(())
}
