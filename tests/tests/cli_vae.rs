//! `tessera vae decode|encode` and `make-model` through the real binary: golden parity of the CLI
//! contract, and bad input giving one clear error line, a non-zero exit and no output file.

use candle_core::{DType, Device, Tensor};
use tessera_e2e::{error_line, errors, golden, run, tessera};
use tessera_engine::tensor_io;

fn read(path: &std::path::Path) -> std::collections::HashMap<String, Tensor> {
    tensor_io::read_all(path, &Device::Cpu).unwrap()
}

#[test]
fn decode_and_encode_match_diffusers_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    for case in ["vae21", "vae22"] {
        let want = read(&golden(case).join("outputs.safetensors"));
        let out = dir.path().join(format!("{case}-dec.safetensors"));
        let status = run(tessera()
            .args(["vae", "decode", "--model"])
            .arg(golden(case))
            .arg("--latents")
            .arg(golden(case).join("inputs.safetensors"))
            .arg("--out")
            .arg(&out));
        assert!(status.status.success());
        let (max, rel) = errors(&read(&out)["video"], &want["decoded"]);
        println!("{case} cli decode: max_abs {max:.2e} rel {rel:.2e}");
        assert!(rel < 1e-4);

        let tiling = if case == "vae21" { "48,48,32,32" } else { "64,64,32,48" };
        let out = dir.path().join(format!("{case}-enc.safetensors"));
        let status = run(tessera()
            .args(["vae", "encode", "--model"])
            .arg(golden(case).join("vae"))
            .arg("--video")
            .arg(golden(case).join("inputs.safetensors"))
            .arg("--out")
            .arg(&out)
            .args(["--tiling", tiling]));
        assert!(status.status.success());
        let (max, rel) = errors(&read(&out)["mean"], &want["enc_mean_tiled"]);
        println!("{case} cli tiled encode: max_abs {max:.2e} rel {rel:.2e}");
        assert!(rel < 1e-4);
    }
}

/// Runs `tessera vae decode` expecting failure; returns the error line. The output must not exist.
fn decode_fails(model: &std::path::Path, latents: &std::path::Path, extra: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.safetensors");
    let o = run(tessera()
        .args(["vae", "decode", "--model"])
        .arg(model)
        .arg("--latents")
        .arg(latents)
        .arg("--out")
        .arg(&out)
        .args(extra));
    assert!(!o.status.success(), "expected failure");
    assert!(!out.exists(), "a failed run must not leave an output file");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "no temporary files left behind");
    let line = error_line(&o);
    assert!(line.starts_with("error: "), "one error line expected, got {line:?}");
    assert!(!String::from_utf8_lossy(&o.stderr).contains("panicked"));
    line
}

fn write(dir: &std::path::Path, name: &str, t: Tensor) -> std::path::PathBuf {
    let p = dir.join(name);
    tensor_io::write_atomic(&p, &[("latents", t)]).unwrap();
    p
}

#[test]
fn bad_input_is_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let model = golden("vae21");
    let dev = Device::Cpu;

    let four_d = write(dir.path(), "4d.safetensors", Tensor::zeros((1, 4, 10, 12), DType::F32, &dev).unwrap());
    assert!(decode_fails(&model, &four_d, &[]).contains("5-D [B, C, T, H, W]"));

    let channels = write(dir.path(), "c.safetensors", Tensor::zeros((1, 16, 1, 4, 4), DType::F32, &dev).unwrap());
    assert!(decode_fails(&model, &channels, &[]).contains("expects z_dim = 4"));

    let missing = golden("vae21").join("outputs.safetensors");
    assert!(decode_fails(&model, &missing, &[]).contains("no tensor `latents`"));

    let ok = golden("vae21").join("inputs.safetensors");
    assert!(decode_fails(&model, &ok, &["--tiling", "32,32,48,48"]).contains("smaller than its stride"));

    // Truncated weights: copy the model folder and cut the safetensors file in half.
    let broken = dir.path().join("broken");
    std::fs::create_dir_all(broken.join("vae")).unwrap();
    std::fs::copy(golden("vae21/vae/config.json"), broken.join("vae/config.json")).unwrap();
    let bytes = std::fs::read(golden("vae21/vae/diffusion_pytorch_model.safetensors")).unwrap();
    std::fs::write(broken.join("vae/diffusion_pytorch_model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    assert!(decode_fails(&broken, &ok, &[]).contains("truncated"));

    // Weights that do not match the config (Wan2.2 weights under a Wan2.1 config).
    std::fs::copy(
        golden("vae22/vae/diffusion_pytorch_model.safetensors"),
        broken.join("vae/diffusion_pytorch_model.safetensors"),
    )
    .unwrap();
    let line = decode_fails(&broken, &ok, &[]);
    assert!(line.contains("do not match its config.json"), "{line}");

    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    assert!(decode_fails(&empty, &ok, &[]).contains("no `vae/` folder"));
}

#[test]
fn make_model_writes_a_loadable_real_architecture() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("wan21");
    let o = run(tessera().args(["make-model", "--arch", "wan2.1-vae", "--seed", "3", "--out"]).arg(&out));
    assert!(o.status.success());
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("vae/config.json")).unwrap()).unwrap();
    assert_eq!(cfg["_class_name"], "AutoencoderKLWan");
    assert_eq!(cfg["z_dim"], 16);
    let lat = dir.path().join("lat.safetensors");
    tensor_io::write_atomic(&lat, &[("latents", Tensor::randn(0f32, 1.0, (1, 16, 1, 4, 4), &Device::Cpu).unwrap())])
        .unwrap();
    let video = dir.path().join("video.safetensors");
    let o =
        run(tessera().args(["vae", "decode", "--model"]).arg(&out).arg("--latents").arg(&lat).arg("--out").arg(&video));
    assert!(o.status.success());
    let v = &read(&video)["video"];
    assert_eq!(v.dims(), &[1, 3, 1, 32, 32]);
    let max = v.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(max <= 1.0 && max > 0.0, "decoded values clamped to [-1, 1] and not all zero: {max}");
}

/// `--ranks N` runs the decode on N worker processes in halo mode (row slabs with halo exchange over
/// the socket collectives); the result equals diffusers' untiled decode.
#[test]
fn decode_on_worker_processes_in_halo_mode() {
    let dir = tempfile::tempdir().unwrap();
    for (case, ranks) in [("vae21", "3"), ("vae22", "2")] {
        let want = read(&golden(case).join("outputs.safetensors"));
        let out = dir.path().join(format!("{case}-halo.safetensors"));
        let o = run(tessera()
            .args(["vae", "decode", "--model"])
            .arg(golden(case))
            .arg("--latents")
            .arg(golden(case).join("inputs.safetensors"))
            .arg("--out")
            .arg(&out)
            .args(["--ranks", ranks]));
        assert!(o.status.success());
        let (max, rel) = errors(&read(&out)["video"], &want["decoded"]);
        println!("{case} halo decode on {ranks} worker processes: max_abs {max:.2e} rel {rel:.2e}");
        assert!(rel < 1e-4);
    }
    // The run report names every rank with its peak and phases.
    let report = dir.path().join("report.json");
    let o = run(tessera()
        .args(["vae", "decode", "--model"])
        .arg(golden("vae22"))
        .arg("--latents")
        .arg(golden("vae22").join("inputs.safetensors"))
        .arg("--out")
        .arg(dir.path().join("r.safetensors"))
        .args(["--ranks", "2", "--report"])
        .arg(&report));
    assert!(o.status.success());
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert!(r["wall_seconds"].as_f64().unwrap() > 0.0);
    let ranks = r["ranks"].as_array().unwrap();
    assert_eq!(ranks.len(), 2);
    for rank in ranks {
        assert!(rank["peak_bytes"].as_u64().unwrap() > 0 && rank["weights_bytes"].as_u64().unwrap() > 0);
        let phases: Vec<&str> =
            rank["phases"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
        let want: &[&str] =
            if rank["rank"].as_u64() == Some(0) { &["load", "decode", "write"] } else { &["load", "decode"] };
        assert_eq!(phases, want);
    }
    // More ranks than latent rows: a clear error naming the limit, no output.
    let latents = golden("vae22").join("inputs.safetensors");
    let line = decode_fails(&golden("vae22"), &latents, &["--ranks", "7"]);
    assert!(line.contains("use at most 6 ranks"), "{line}");
}

fn tessera_vae(op: &str, case: &str, input: &str, out: &std::path::Path, extra: &[&str]) -> std::process::Output {
    run(tessera()
        .args(["vae", op, "--model"])
        .arg(golden(case))
        .arg(if op == "decode" { "--latents" } else { "--video" })
        .arg(golden(case).join(input))
        .arg("--out")
        .arg(out)
        .args(extra))
}

/// `--mode tiles` on worker processes is bit-identical to the single-process tiled decode;
/// `--vae-parallel` below the world leaves the other ranks idle; encode runs in both modes.
#[test]
fn tiles_mode_and_encode_on_worker_processes() {
    let dir = tempfile::tempdir().unwrap();
    let want = read(&golden("vae21").join("outputs.safetensors"));
    let single = dir.path().join("single.safetensors");
    assert!(tessera_vae("decode", "vae21", "inputs.safetensors", &single, &["--tiling", "48,48,32,32"])
        .status
        .success());
    let tiles = dir.path().join("tiles.safetensors");
    let o = tessera_vae(
        "decode",
        "vae21",
        "inputs.safetensors",
        &tiles,
        &["--tiling", "48,48,32,32", "--ranks", "3", "--mode", "tiles"],
    );
    assert!(o.status.success());
    let (got, one) = (&read(&tiles)["video"], &read(&single)["video"]);
    let same =
        got.flatten_all().unwrap().to_vec1::<f32>().unwrap() == one.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!(same, "tiles mode on 3 worker processes differs from the single-process tiled decode");
    let (max, rel) = errors(got, &want["decoded_tiled"]);
    println!("vae21 tiles decode on 3 worker processes: bit-identical to 1 process; vs diffusers max_abs {max:.2e} rel {rel:.2e}");
    assert!(rel < 1e-4);

    // Halo on 2 of 3 ranks.
    let out = dir.path().join("vp.safetensors");
    let report = dir.path().join("vp.json");
    let o = tessera_vae(
        "decode",
        "vae21",
        "inputs.safetensors",
        &out,
        &["--ranks", "3", "--vae-parallel", "2", "--report", report.to_str().unwrap()],
    );
    assert!(o.status.success());
    let (max, rel) = errors(&read(&out)["video"], &want["decoded"]);
    println!("vae21 halo decode on 2 of 3 worker processes: max_abs {max:.2e} rel {rel:.2e}");
    assert!(rel < 1e-4);
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let idle = &r["ranks"].as_array().unwrap()[2];
    assert_eq!(idle["weights_bytes"].as_u64(), Some(0), "rank 2 is outside --vae-parallel 2 and loads nothing");

    // Encode, both modes, 2 worker processes.
    for (mode, key, extra) in
        [("tiles", "enc_mean_tiled", vec!["--tiling", "48,48,32,32"]), ("halo", "enc_mean", vec![])]
    {
        let out = dir.path().join(format!("enc-{mode}.safetensors"));
        let mut args = vec!["--ranks", "2", "--mode", mode];
        args.extend(extra);
        assert!(tessera_vae("encode", "vae21", "inputs.safetensors", &out, &args).status.success());
        let (max, rel) = errors(&read(&out)["mean"], &want[key]);
        println!("vae21 {mode} encode on 2 worker processes: max_abs {max:.2e} rel {rel:.2e}");
        assert!(rel < 1e-4);
    }

    // Halo with tiling is a contradiction, said before any worker starts.
    let line = decode_fails(
        &golden("vae21"),
        &golden("vae21").join("inputs.safetensors"),
        &["--ranks", "2", "--mode", "halo", "--tiling", "48,48,32,32"],
    );
    assert!(line.contains("--mode halo") && line.contains("--tiling"), "{line}");
}
