//! The recycling loop: early stop and an initial state (the initial guess of AF2-IG).

use af2_model::features::Features;
use af2_model::model::RecycleOptions;
use af2_model::outputs::to_host;
use af2_tests::{OracleCase, case_model, fixtures_dir, reference_device};

fn all_iterations(case: &OracleCase) -> Vec<Features> {
    (0..case.iterations())
        .map(|r| case.iteration_features(r).unwrap())
        .collect()
}

#[test]
fn early_stop_ends_the_loop_once_the_change_is_below_tolerance() {
    let device = reference_device();
    let case = OracleCase::open(&fixtures_dir().join("single_seq_n24")).unwrap();
    let model = case_model(&case, &device).unwrap();
    let features = all_iterations(&case);
    assert_eq!(features.len(), 3);

    let (_, full) =
        model.forward_recycled_with(&features, None, &RecycleOptions::default(), &device);
    assert_eq!(full.iterations_run, 3);
    assert!(!full.stopped_early);
    assert_eq!(full.ca_distance_change.len(), 2);
    assert!(
        full.ca_distance_change
            .iter()
            .all(|c| c.is_finite() && *c > 0.0)
    );

    // A tolerance above the first change stops after the second iteration.
    let tol = full.ca_distance_change[0] * 1.01;
    let options = RecycleOptions {
        early_stop_tolerance: Some(tol),
    };
    let (_, stopped) = model.forward_recycled_with(&features, None, &options, &device);
    assert_eq!(stopped.iterations_run, 2);
    assert!(stopped.stopped_early);

    // A tolerance below every change never stops.
    let tol = full
        .ca_distance_change
        .iter()
        .cloned()
        .fold(f32::INFINITY, f32::min)
        * 0.99;
    let options = RecycleOptions {
        early_stop_tolerance: Some(tol),
    };
    let (_, never) = model.forward_recycled_with(&features, None, &options, &device);
    assert_eq!(never.iterations_run, 3);
}

#[test]
fn an_initial_state_replaces_the_zero_state() {
    let device = reference_device();
    let case = OracleCase::open(&fixtures_dir().join("msa_template_n16")).unwrap();
    let model = case_model(&case, &device).unwrap();
    let last = case.iterations() - 1;
    let fed = case.fed_state(last, &device).unwrap().unwrap();
    let features = [case.iteration_features(last).unwrap()];

    let seeded = model.forward_recycled(&features, Some(fed.clone()), &device);
    let direct = model.forward_iteration(&features[0], fed, &device);
    let zeros = model.forward_recycled(&features, None, &device);
    let pos =
        |o: &af2_model::model::IterationOutput| to_host(o.structure.final_atom37.clone()).data;
    assert_eq!(pos(&seeded), pos(&direct));
    assert_ne!(pos(&seeded), pos(&zeros));
}

#[test]
fn timed_recycling_computes_the_same_and_times_every_stage() {
    let device = reference_device();
    // A case with a template: the timed loop keeps the template embeddings as the plain one.
    let case = OracleCase::open(&fixtures_dir().join("msa_template_n16")).unwrap();
    let model = case_model(&case, &device).unwrap();
    let features = case.iteration_features(0).unwrap();
    let mut times = af2_model::model::StageTimes::default();
    let timed = model.forward_recycled_timed(&features, 2, &device, &mut times);
    let plain = model.forward_recycled(&[features.clone(), features], None, &device);
    let pos =
        |o: &af2_model::model::IterationOutput| to_host(o.structure.final_atom37.clone()).data;
    assert_eq!(pos(&timed), pos(&plain));
    for (stage, t) in [
        ("embeddings", times.embeddings),
        ("extra_msa", times.extra_msa),
        ("evoformer", times.evoformer),
        ("structure_module", times.structure_module),
        ("heads", times.heads),
    ] {
        assert!(t > 0.0, "{stage} not timed");
    }
}
