//! ONE microdata: recipes, serialization, parsing, hashes (objects.md §1-§3).

mod value;
pub use value::Value;
