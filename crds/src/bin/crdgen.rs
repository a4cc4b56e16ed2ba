//! Writes the CRD YAML into a directory (default `crds/generated`), or prints it with `-`;
//! with the default directory, also the API reference (`docs/api-reference.md`).

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let target = std::env::args().nth(1);
    let docs = patrol_api::crd::all()?;
    match target.as_deref() {
        Some("-") => {
            for (_, yaml) in docs {
                print!("---\n{yaml}");
            }
        }
        other => {
            let dir = other
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("generated"));
            std::fs::create_dir_all(&dir)?;
            for (name, yaml) in docs {
                std::fs::write(dir.join(name), yaml)?;
                eprintln!("wrote {}", dir.join(name).display());
            }
            if other.is_none() {
                let reference = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                    .join("..")
                    .join(patrol_api::reference::PATH);
                std::fs::write(&reference, patrol_api::reference::render())?;
                eprintln!("wrote {}", reference.display());
            }
        }
    }
    Ok(())
}
